package bridge_test

import (
	"context"
	"testing"
	"time"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge"
)

// After a restart with another stream.subject_prefix (stream.manage moves
// the stream to it), spooled coordinates are replayed on the new prefix: the
// subject they were spooled with is taken by no stream, and replaying it
// would fail for ever, with the device's new coordinates spooled behind.
func TestSpoolReplayAfterSubjectPrefixChange(t *testing.T) {
	e := newEnv(t, nil)
	sp, _ := spoolWhileDown(t, e, "p", 3)
	e.nats = e.nats.Restart(t)
	for !e.nc.IsConnected() {
		time.Sleep(5 * time.Millisecond)
	}
	// Restart with a new prefix.
	srv2 := e.newServer(t, sp, func(o *bridge.Options) { o.Stream.SubjectPrefix = "fleet.coords" })
	if err := srv2.EnsureStream(context.Background()); err != nil {
		t.Fatal(err)
	}
	base2, stop2 := runServer(t, srv2)
	defer stop2()
	waitReady(t, base2, true)
	st, _ := e.js.Stream(context.Background(), "COORDS")
	waitStreamMsgs(t, st, 3)
	if n, _ := sp.Stats(); n != 0 {
		t.Fatalf("the spool still holds %d records after the replay", n)
	}
	if _, err := st.GetLastMsgForSubject(context.Background(), "fleet.coords.p"); err != nil {
		t.Fatalf("no replayed coordinate on the new prefix: %v", err)
	}
	if code, ans := postTo(t, base2, `{"device_id":"p","lat":1,"lon":9,"ts":1772359300}`); code != 200 {
		t.Fatalf("the device's next coordinate answered %d %v, want 200", code, ans)
	}
}
