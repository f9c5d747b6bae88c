-- One row per coordinate; msg_id (the Nats-Msg-Id) makes a redelivered or
-- replayed message a no-op.
CREATE TABLE coords (
    msg_id      text             NOT NULL PRIMARY KEY,
    device_id   text             NOT NULL,
    ts          timestamptz      NOT NULL,
    received_at timestamptz      NOT NULL,
    lat         double precision NOT NULL,
    lon         double precision NOT NULL,
    alt_m       double precision,
    speed_kmh   double precision,
    heading_deg double precision,
    accuracy_m  double precision,
    battery_pct double precision,
    event       text,
    ts_missing  boolean          NOT NULL DEFAULT false,
    attrs       jsonb,
    raw         json,
    stream_seq  bigint           NOT NULL,
    stored_at   timestamptz      NOT NULL DEFAULT now()
);

CREATE INDEX coords_device_ts ON coords (device_id, ts);
