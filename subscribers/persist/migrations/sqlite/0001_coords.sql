-- One row per coordinate; msg_id (the Nats-Msg-Id) makes a redelivered or
-- replayed message a no-op. Times are UTC text with a fixed nine-digit
-- fraction (2025-03-01T12:00:00.000000000Z), so text order is time order and
-- SQLite's date functions read them. attrs and raw hold JSON text (json_extract
-- reads them); the persister only writes what it decoded as JSON.
CREATE TABLE coords (
    msg_id      TEXT    NOT NULL,
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

-- One index serves both needs: per-device queries by time (its prefix) and
-- uniqueness of the message id. The id is a hash of (device, fix time, lat,
-- lon), so equal ids always have equal (device_id, ts): unique
-- (device_id, ts, msg_id) is unique msg_id, at the cost of one index instead
-- of two, which halves the pages a batch dirties.
CREATE UNIQUE INDEX coords_device_ts ON coords (device_id, ts, msg_id);
