package persist

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The schema of each database, as numbered SQL files applied in order.
// A migration, once released, is never edited: a change is a new file.
//
//go:embed migrations
var migrationFS embed.FS

// migration is one versioned schema step.
type migration struct {
	version int
	name    string
	sql     string
}

// migrations returns the steps for dialect ("postgres" or "sqlite") in
// version order. File names are NNNN_name.sql.
func migrations(dialect string) ([]migration, error) {
	dir := path.Join("migrations", dialect)
	entries, err := fs.ReadDir(migrationFS, dir)
	if err != nil {
		return nil, fmt.Errorf("migrations %s: %w", dialect, err)
	}
	var out []migration
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".sql") {
			continue
		}
		num, rest, ok := strings.Cut(strings.TrimSuffix(name, ".sql"), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration file %s: want NNNN_name.sql", name)
		}
		b, err := migrationFS.ReadFile(path.Join(dir, name))
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: rest, sql: string(b)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	for i := 1; i < len(out); i++ {
		if out[i].version == out[i-1].version {
			return nil, fmt.Errorf("migrations %s: version %d twice", dialect, out[i].version)
		}
	}
	return out, nil
}

// schemaMigrationsDDL creates the version table; the same statement works in
// both databases.
const schemaMigrationsDDL = `CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text    NOT NULL,
    applied_at text    NOT NULL
)`

// migrationTx is the part of a transaction applyMigrations needs; pgx and
// database/sql transactions are adapted to it.
type migrationTx interface {
	exec(ctx context.Context, sql string, args ...any) error
	queryInt(ctx context.Context, sql string) (int, error)
}

// applyMigrations brings the schema inside tx up to the last of steps, or
// refuses a database newer than this persister. insertVersion records a
// step: its placeholders are the dialect's ($1 or ?).
func applyMigrations(ctx context.Context, tx migrationTx, steps []migration, insertVersion string) error {
	if err := tx.exec(ctx, schemaMigrationsDDL); err != nil {
		return err
	}
	have, err := tx.queryInt(ctx, `SELECT coalesce(max(version), 0) FROM schema_migrations`)
	if err != nil {
		return err
	}
	if last := steps[len(steps)-1].version; have > last {
		return fmt.Errorf("database schema is at version %d, newer than this persister knows (%d): run a newer persister", have, last)
	}
	for _, m := range steps {
		if m.version <= have {
			continue
		}
		if err := tx.exec(ctx, m.sql); err != nil {
			return fmt.Errorf("migration %d %s: %w", m.version, m.name, err)
		}
		if err := tx.exec(ctx, insertVersion, m.version, m.name, time.Now().UTC().Format(time.RFC3339)); err != nil {
			return err
		}
	}
	return nil
}
