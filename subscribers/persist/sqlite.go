package persist

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// sqliteChunk is the rows per INSERT statement: 16 columns x 128 rows =
// 2048 parameters, well under SQLite's 32766, and large enough that the
// statement overhead vanishes against the row work.
const sqliteChunk = 128

type sqliteStore struct {
	db   *sql.DB
	w    *sql.Conn // the one writer, with the large page cache
	full *sql.Stmt // the prepared sqliteChunk-row INSERT, on w

	stopCheckpoints context.CancelFunc
	checkpointsDone chan struct{}
}

// openSQLite opens the database file with the pragmas the persister relies
// on, applied to every connection:
//
//   - journal_mode=WAL: the readiness ping and readers (operators' queries)
//     never block the writer, and a commit appends to the log instead of
//     rewriting pages.
//   - synchronous=FULL by default: the WAL is fsynced at each commit, so a
//     committed batch, whose messages are acked right after, survives a
//     power cut. One fsync per 500-row batch costs little. NORMAL is
//     offered for speed where losing the last acked batches on power loss
//     is acceptable.
//   - wal_autocheckpoint=10000 pages (about 40 MB of WAL): a checkpoint
//     copies each page once however often it changed since the last one, so
//     checkpointing ten times less often than the default 1000 cuts the
//     writes of the random msg_id index pages roughly in half; a busy
//     persister gains about half its rate.
//   - cache_size=32 MiB on the writer's connection: the two indexes (random msg_id, device/time) of a
//     million-row table stay in memory instead of being read back for every
//     insert; the persister's RSS stays near 100 MB.
//   - busy_timeout: a write waits that long for another connection's lock
//     before failing with SQLITE_BUSY (then the batch is retried).
//   - _txlock=immediate: transactions take the write lock at BEGIN, so a
//     conflict shows at the start (and waits busy_timeout) instead of
//     failing at the first write after work was done.
func openSQLite(cfg Config) (*sqliteStore, error) {
	dsn, err := sqliteDSN(cfg)
	if err != nil {
		return nil, err
	}
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("persist: open sqlite %s: %w", cfg.DSN, err)
	}
	// One writer at a time is SQLite's rule anyway: the store keeps one
	// connection for it; the others run the background checkpoints and the
	// readiness ping.
	db.SetMaxOpenConns(3)
	db.SetMaxIdleConns(3)
	db.SetConnMaxIdleTime(0)
	// A local file that cannot be opened is a configuration error (path,
	// permissions), not an outage to wait out.
	w, err := db.Conn(context.Background())
	if err == nil {
		// The page cache is per connection: only the writer needs it big.
		_, err = w.ExecContext(context.Background(), "PRAGMA cache_size = -32768")
	}
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("persist: open sqlite %s: %w", cfg.DSN, err)
	}
	return &sqliteStore{db: db, w: w}, nil
}

// sqliteDSN creates the database directory and adds the pragmas to the DSN.
func sqliteDSN(cfg Config) (string, error) {
	dsn := cfg.DSN
	base, query, _ := strings.Cut(dsn, "?")
	q, err := url.ParseQuery(query)
	if err != nil {
		return "", fmt.Errorf("persist: sqlite DSN %q: %w", dsn, err)
	}
	file := strings.TrimPrefix(base, "file:")
	if file != "" && file != ":memory:" && q.Get("mode") != "memory" {
		if dir := filepath.Dir(file); dir != "." && dir != "" {
			if err := os.MkdirAll(dir, 0o750); err != nil {
				return "", fmt.Errorf("persist: create database directory %s: %w", dir, err)
			}
		}
	}
	q.Add("_pragma", "busy_timeout("+strconv.FormatInt(cfg.BusyTimeout.Milliseconds(), 10)+")")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "wal_autocheckpoint(40000)")
	q.Add("_pragma", "synchronous("+strings.ToUpper(cfg.SQLiteSynchronous)+")")
	if q.Get("_txlock") == "" {
		q.Set("_txlock", "immediate")
	}
	return base + "?" + q.Encode(), nil
}

func (s *sqliteStore) close() {
	if s.stopCheckpoints != nil {
		s.stopCheckpoints()
		<-s.checkpointsDone
	}
	if s.full != nil {
		_ = s.full.Close()
	}
	_ = s.w.Close()
	_ = s.db.Close()
}

func (s *sqliteStore) ping(ctx context.Context) error { return s.db.PingContext(ctx) }

type sqlMigrationTx struct{ tx *sql.Tx }

func (t sqlMigrationTx) exec(ctx context.Context, query string, args ...any) error {
	_, err := t.tx.ExecContext(ctx, query, args...)
	return err
}

func (t sqlMigrationTx) queryInt(ctx context.Context, query string) (n int, err error) {
	err = t.tx.QueryRowContext(ctx, query).Scan(&n)
	return n, err
}

func (s *sqliteStore) migrate(ctx context.Context) error {
	steps, err := migrations(DriverSQLite)
	if err != nil {
		return err
	}
	tx, err := s.w.BeginTx(ctx, nil) // BEGIN IMMEDIATE: concurrent starters queue here
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	if err := applyMigrations(ctx, sqlMigrationTx{tx}, steps, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	full, err := s.w.PrepareContext(ctx, sqliteInsertSQL(sqliteChunk))
	if err != nil {
		return fmt.Errorf("prepare insert: %w", err)
	}
	s.full = full
	s.startCheckpoints()
	return nil
}

// checkpointEvery is how often the WAL is copied back into the database
// file, off the writer's path.
const checkpointEvery = 500 * time.Millisecond

// startCheckpoints runs passive checkpoints on their own connection, so the
// copy of WAL pages into the database file overlaps the next batch's insert
// (on the other core) instead of stalling a commit; wal_autocheckpoint stays
// as the backstop that bounds the WAL if this falls behind.
func (s *sqliteStore) startCheckpoints() {
	ctx, cancel := context.WithCancel(context.Background())
	s.stopCheckpoints = cancel
	s.checkpointsDone = make(chan struct{})
	go func() {
		defer close(s.checkpointsDone)
		t := time.NewTicker(checkpointEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				// Errors (busy, closed) only mean this round is skipped.
				_, _ = s.db.ExecContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)")
			}
		}
	}()
}

func sqliteInsertSQL(n int) string {
	var b strings.Builder
	b.WriteString("INSERT INTO coords (")
	b.WriteString(strings.Join(columns, ", "))
	b.WriteString(") VALUES ")
	one := "(" + strings.TrimSuffix(strings.Repeat("?,", len(columns)), ",") + ")"
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(one)
	}
	b.WriteString(" ON CONFLICT (device_id, ts, msg_id) DO NOTHING")
	return b.String()
}

func (s *sqliteStore) insert(ctx context.Context, rows []row) (int, error) {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer func() { _ = tx.Rollback() }()
	args := make([]any, 0, sqliteChunk*len(columns))
	inserted := 0
	for start := 0; start < len(rows); start += sqliteChunk {
		chunk := rows[start:min(start+sqliteChunk, len(rows))]
		args = args[:0]
		for i := range chunk {
			args = appendSQLiteArgs(args, &chunk[i])
		}
		var res sql.Result
		if len(chunk) == sqliteChunk {
			res, err = tx.StmtContext(ctx, s.full).ExecContext(ctx, args...)
		} else {
			res, err = tx.ExecContext(ctx, sqliteInsertSQL(len(chunk)), args...)
		}
		if err != nil {
			return 0, err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return 0, err
		}
		inserted += int(n)
	}
	if err := tx.Commit(); err != nil {
		return 0, err
	}
	return inserted, nil
}

func appendSQLiteArgs(args []any, r *row) []any {
	var event, attrs, raw any
	if r.event != "" {
		event = r.event
	}
	if r.attrs != nil {
		attrs = string(r.attrs) // TEXT, not BLOB: SQLite would read a blob as JSONB
	}
	if r.raw != nil {
		raw = string(r.raw)
	}
	tsMissing := 0
	if r.tsMissing {
		tsMissing = 1
	}
	return append(args, r.msgID, r.deviceID, r.ts.Format(sqliteTimeLayout), r.receivedAt.Format(sqliteTimeLayout),
		r.lat, r.lon, optional(r.altM), optional(r.speedKmh), optional(r.headingDeg), optional(r.accuracyM),
		optional(r.batteryPct), event, tsMissing, attrs, raw, r.streamSeq)
}

func optional(f *float64) any {
	if f == nil {
		return nil
	}
	return *f
}

// sqliteCode returns the primary result code of an SQLite error, or 0.
func sqliteCode(err error) int {
	var e *sqlite.Error
	if errors.As(err, &e) {
		return e.Code() & 0xff
	}
	return 0
}

func (s *sqliteStore) rejected(err error) bool {
	switch sqliteCode(err) {
	case sqlite3.SQLITE_CONSTRAINT, sqlite3.SQLITE_TOOBIG, sqlite3.SQLITE_MISMATCH, sqlite3.SQLITE_RANGE:
		return true
	}
	return false
}

func (s *sqliteStore) transient(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return true
	}
	switch sqliteCode(err) {
	case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL,
		sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PROTOCOL, sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_INTERRUPT,
		sqlite3.SQLITE_READONLY:
		return true
	}
	return false
}
