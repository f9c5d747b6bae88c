-- One row per coordinate; msg_id (the Nats-Msg-Id) makes a redelivered or
-- replayed message a no-op. Times are UTC text with a fixed nine-digit
-- fraction (2025-03-01T12:00:00.000000000Z), so text order is time order and
-- SQLite's date functions read them. attrs and raw hold JSON text (json_extract
-- reads them); the persister only writes what it decoded as JSON.
CREATE TABLE coords (
    msg_id      TEXT    NOT NULL UNIQUE,
    device_id   TEXT    NOT NULL,
    ts          TEXT    NOT NULL,
    received_at TEXT    NOT NULL,
    lat         REAL    NOT NULL,
    lon         REAL    NOT NULL,
    alt_m       REAL,
    speed_kmh   REAL,
    heading_deg REAL,
    accuracy_m  REAL,
    battery_pct REAL,
    event       TEXT,
    ts_missing  INTEGER NOT NULL DEFAULT 0,
    attrs       TEXT,
    raw         TEXT,
    stream_seq  INTEGER NOT NULL,
    stored_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE INDEX coords_device_ts ON coords (device_id, ts);
