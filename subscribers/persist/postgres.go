package persist

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// stageDDL creates the connection's staging table. It is temporary (private
// to the connection, no WAL) and emptied at every commit, so a batch COPYs
// into it and moves on with one INSERT ... SELECT ... ON CONFLICT.
const stageDDL = `CREATE TEMPORARY TABLE IF NOT EXISTS coords_stage (
    msg_id      text,
    device_id   text,
    ts          timestamptz,
    received_at timestamptz,
    lat         double precision,
    lon         double precision,
    alt_m       double precision,
    speed_kmh   double precision,
    heading_deg double precision,
    accuracy_m  double precision,
    battery_pct double precision,
    event       text,
    ts_missing  boolean,
    attrs       jsonb,
    raw         json,
    stream_seq  bigint
) ON COMMIT DELETE ROWS`

// migrationLockKey serialises persisters migrating the same database at
// once (pg_advisory_xact_lock; released at commit).
const migrationLockKey = 0x75626971_6f706572 // "ubiqoper"

type pgStore struct {
	pool      *pgxpool.Pool
	insertSQL string
}

func openPostgres(ctx context.Context, cfg Config) (*pgStore, error) {
	pcfg, err := pgxpool.ParseConfig(cfg.DSN)
	if err != nil {
		// pgx's message may quote the DSN; say what is wrong without it.
		var pe *pgconn.ParseConfigError
		if errors.As(err, &pe) && pe.Unwrap() != nil {
			return nil, fmt.Errorf("persist: persist.dsn is not a valid PostgreSQL URL or key=value string: %v", pe.Unwrap())
		}
		return nil, errors.New("persist: persist.dsn is not a valid PostgreSQL URL or key=value string")
	}
	pcfg.MaxConns = int32(cfg.MaxConns)
	pcfg.MinConns = 0
	pcfg.HealthCheckPeriod = 5 * time.Second
	if pcfg.ConnConfig.ConnectTimeout == 0 || pcfg.ConnConfig.ConnectTimeout > 5*time.Second {
		pcfg.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	if _, ok := pcfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		pcfg.ConnConfig.RuntimeParams["application_name"] = "ubiqo-persister"
	}
	pcfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
		_, err := c.Exec(ctx, stageDDL)
		return err
	}
	// Connections are made on demand: a database that is down at start is
	// waited for by the retrying batches, not a reason to exit.
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("persist: postgres pool: %w", err)
	}
	cols := strings.Join(columns, ", ")
	return &pgStore{
		pool: pool,
		// ORDER BY msg_id: concurrent batches take their key locks in the
		// same order, so two batches holding the same coordinates wait for
		// each other instead of deadlocking; then stream_seq: within a
		// batch the first stream message of a coordinate is the stored one.
		insertSQL: "INSERT INTO coords (" + cols + ") SELECT " + cols +
			" FROM coords_stage ORDER BY msg_id, stream_seq ON CONFLICT (msg_id) DO NOTHING",
	}, nil
}

func (s *pgStore) close() { s.pool.Close() }

func (s *pgStore) ping(ctx context.Context) error { return s.pool.Ping(ctx) }

func (s *pgStore) migrate(ctx context.Context) error {
	steps, err := migrations(DriverPostgres)
	if err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrationLockKey)); err != nil {
			return err
		}
		return applyMigrations(ctx, pgMigrationTx{tx}, steps, `INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)`)
	})
}

type pgMigrationTx struct{ tx pgx.Tx }

func (t pgMigrationTx) exec(ctx context.Context, sql string, args ...any) error {
	_, err := t.tx.Exec(ctx, sql, args...)
	return err
}

func (t pgMigrationTx) queryInt(ctx context.Context, sql string) (n int, err error) {
	err = t.tx.QueryRow(ctx, sql).Scan(&n)
	return n, err
}

func (s *pgStore) insert(ctx context.Context, rows []row) (int, error) {
	var inserted int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		vals := make([]any, len(columns))
		_, err := tx.CopyFrom(ctx, pgx.Identifier{"coords_stage"}, columns, pgx.CopyFromSlice(len(rows), func(i int) ([]any, error) {
			r := &rows[i]
			vals[0] = pgText(r.msgID)
			vals[1] = pgText(r.deviceID)
			vals[2] = r.ts
			vals[3] = r.receivedAt
			vals[4] = r.lat
			vals[5] = r.lon
			vals[6] = r.altM
			vals[7] = r.speedKmh
			vals[8] = r.headingDeg
			vals[9] = r.accuracyM
			vals[10] = r.batteryPct
			if r.event != "" {
				vals[11] = pgText(r.event)
			} else {
				vals[11] = nil
			}
			vals[12] = r.tsMissing
			vals[13] = pgJSONB(r.attrs)
			vals[14] = r.raw
			vals[15] = r.streamSeq
			return vals, nil
		}))
		if err != nil {
			return fmt.Errorf("copy into staging: %w", err)
		}
		tag, err := tx.Exec(ctx, s.insertSQL)
		if err != nil {
			return fmt.Errorf("insert from staging: %w", err)
		}
		inserted = tag.RowsAffected()
		return nil
	})
	if err != nil {
		return 0, err
	}
	return int(inserted), nil
}

// pgText makes s storable as PostgreSQL text, which cannot hold NUL: a NUL
// becomes U+FFFD (the message body keeps the original in raw).
func pgText(s string) string {
	if strings.IndexByte(s, 0) < 0 {
		return s
	}
	return strings.ReplaceAll(s, "\x00", "\uFFFD")
}

// pgJSONB makes a JSON object storable as jsonb, which refuses the escape
// \u0000: it becomes \ufffd. nil stays nil (NULL).
func pgJSONB(b []byte) []byte {
	if b == nil || !bytes.Contains(b, []byte(`\u0000`)) {
		return b
	}
	return bytes.ReplaceAll(b, []byte(`\u0000`), []byte(`\ufffd`))
}

// pgState returns the SQLSTATE of a server error, or "".
func pgState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// rejected: data exceptions (class 22), integrity violations (23) and
// program limits such as a too-large row (54) judge the row, not the moment.
func (s *pgStore) rejected(err error) bool {
	st := pgState(err)
	return strings.HasPrefix(st, "22") || strings.HasPrefix(st, "23") || strings.HasPrefix(st, "54")
}

// transient: every failure that did not come from the server (network,
// timeouts, a closed pool) and the server's own passing troubles:
// connection exceptions (08), serialization failure and deadlock (40),
// insufficient resources (53), operator intervention such as a shutdown or
// cancelled statement (57), lock not available (55P03), system errors (58).
func (s *pgStore) transient(err error) bool {
	st := pgState(err)
	if st == "" {
		return true
	}
	switch {
	case strings.HasPrefix(st, "08"), strings.HasPrefix(st, "40"), strings.HasPrefix(st, "53"),
		strings.HasPrefix(st, "57"), strings.HasPrefix(st, "58"), st == "55P03":
		return true
	}
	return false
}
