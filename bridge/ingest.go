package bridge

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/spool"
)

// ingestResponse is the answer to a webhook call (DESIGN.md "Ingest
// contract"): accepted = newly stored, duplicates = already stored before
// (same message id), rejected = invalid items with their index.
type ingestResponse struct {
	Accepted   int               `json:"accepted"`
	Duplicates int               `json:"duplicates"`
	Spooled    int               `json:"spooled,omitempty"`
	Rejected   []coord.Rejection `json:"rejected"`
}

// errorResponse is every error answer.
type errorResponse struct {
	Error    string            `json:"error"`
	Rejected []coord.Rejection `json:"rejected,omitempty"`
}

var bodyPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// defaultMaxPayload is nats-server's default max_payload (1 MiB).
const defaultMaxPayload = 1 << 20

// retryAfterSeconds is what a 503 asks the sender to wait.
const retryAfterSeconds = "2"

// handleIngest serves POST and GET on http.path: decode, validate, publish,
// and answer 200 only once JetStream has acked every accepted coordinate.
func (s *Server) handleIngest(c echo.Context) error {
	r := c.Request()
	if r.ContentLength > s.opts.MaxBodyBytes {
		return s.tooLarge()
	}
	buf := bodyPool.Get().(*bytes.Buffer)
	buf.Reset()
	defer func() {
		if buf.Cap() <= 64<<10 { // don't keep rare huge buffers alive
			bodyPool.Put(buf)
		}
	}()
	if r.Body != nil && r.Body != http.NoBody {
		if err := s.readBody(c, buf); err != nil {
			return err
		}
	}

	var query url.Values
	if buf.Len() == 0 {
		query = queryToUTF8(r.URL.Query())
	}
	contentType := r.Header.Get(echo.HeaderContentType)
	body, err := toUTF8(contentType, buf.Bytes())
	if err != nil {
		return err
	}
	batch, err := s.dec.Decode(contentType, body, query, time.Now())
	if err != nil {
		return decodeError(err, s.opts.MaxBatch)
	}
	s.metrics.rejected.Add(float64(len(batch.Rejected)))
	rejected := batch.Rejected
	if rejected == nil {
		rejected = []coord.Rejection{}
	}
	if len(batch.Coords) == 0 {
		return c.JSON(http.StatusUnprocessableEntity, errorResponse{Error: "no valid coordinate in request", Rejected: rejected})
	}

	recs := s.pub.Records(batch.Coords)
	// A coordinate whose message the server cannot take (max_payload) is
	// rejected now: spooled, it would never leave and would hold up every
	// later coordinate of its device.
	var items []int // the request item of each record, once needed
	limit := s.nc.MaxPayload()
	if limit <= 0 {
		// Not connected since the start: the server has not said its
		// max_payload. Its default holds meanwhile, so that no
		// coordinate too large for it is spooled (it could never leave).
		limit = defaultMaxPayload
	}
	for i := range recs {
		if int64(MessageSize(&recs[i])) > limit {
			items = itemIndexes(len(recs), batch.Rejected)
			var tooBig []coord.Rejection
			recs, items, tooBig = dropOversize(recs, items, limit)
			rejected = mergeRejections(rejected, tooBig)
			s.metrics.rejected.Add(float64(len(tooBig)))
			break
		}
	}
	if len(recs) == 0 {
		setCounts(c, 0, 0, 0, len(rejected))
		return c.JSON(http.StatusRequestEntityTooLarge, errorResponse{Error: "no coordinate small enough to store", Rejected: rejected})
	}
	// Per device, a request that will spool waits for the device's earlier
	// requests (still awaiting their acks, they may end in the spool too),
	// and later ones wait for it: see deviceOrder.
	var devBuf [1]string
	devs := devicesOf(devBuf[:0], recs)
	// IsConnected takes the connection's lock, which the flusher holds
	// while it writes: it is asked once per request, again only after a
	// wait.
	connected := s.nc.IsConnected()
	spooling := false
	for {
		spooling = s.mustSpool(devs, connected)
		waited, err := s.order.enter(r.Context(), 2*s.opts.PublishTimeout+2*time.Second, devs, spooling)
		if err != nil {
			return s.unavailable(c, "coordinates of the same device are still being stored; retry later")
		}
		if spooling || !waited {
			break
		}
		if connected = s.nc.IsConnected(); !s.mustSpool(devs, connected) {
			break
		}
		s.order.leave(devs, false) // NATS went away meanwhile: queue as a spooler
	}
	defer s.order.leave(devs, spooling)

	if !connected {
		// Don't wait out a publish timeout when NATS is known to be away.
		return s.answerSpooled(c, recs, PublishResult{}, rejected)
	}
	// A device whose older coordinates still wait in the spool queues its
	// new ones behind them, so each device reaches the stream in order.
	var queued []spool.Record
	if s.spool != nil && !s.spool.Empty() {
		if items == nil {
			items = itemIndexes(len(recs), batch.Rejected)
		}
		direct, directItems := recs[:0:0], items[:0:0]
		for i, r := range recs {
			if s.spool.Holds(r.Device) {
				queued = append(queued, r)
			} else {
				direct = append(direct, r)
				directItems = append(directItems, items[i])
			}
		}
		recs, items = direct, directItems
	}

	// Each ack wait is bounded by nats.publish_timeout (set on the
	// JetStream context); the request's context ends it early if the
	// caller goes away.
	start := time.Now()
	res, err := s.pub.Publish(r.Context(), recs)
	if len(recs) > 0 {
		s.metrics.publish.Observe(time.Since(start).Seconds())
	}
	s.metrics.accepted.Add(float64(res.Stored))
	s.metrics.duplicate.Add(float64(res.Duplicates))
	if len(res.TooLarge) > 0 {
		// The stream's max_msg_size, or a server with a smaller
		// max_payload than the one checked above.
		if items == nil {
			items = itemIndexes(len(recs), batch.Rejected)
		}
		tooBig := make([]coord.Rejection, 0, len(res.TooLarge))
		for _, i := range res.TooLarge {
			tooBig = append(tooBig, coord.Rejection{Index: items[i], Error: fmt.Sprintf(
				"coordinate too large to store: its message of %d bytes is more than the NATS server or the stream takes (max_payload, max_msg_size)", MessageSize(&recs[i]))})
		}
		rejected = mergeRejections(rejected, tooBig)
		s.metrics.rejected.Add(float64(len(tooBig)))
		s.log.Warn().Err(err).Str("request_id", requestID(c)).Int("coordinates", len(res.TooLarge)).Msg("coordinates refused for their size")
	}
	if len(res.Failed) > 0 {
		s.log.Warn().Err(err).Str("request_id", requestID(c)).Int("coordinates", len(recs)).
			Int("stored", res.Stored+res.Duplicates).Int("not_stored", len(res.Failed)).Msg("JetStream did not store every coordinate")
		for _, idx := range res.Failed {
			queued = append(queued, recs[idx])
		}
	}
	if len(queued) > 0 {
		return s.answerSpooled(c, queued, res, rejected)
	}
	if res.Stored+res.Duplicates == 0 && len(res.TooLarge) > 0 {
		setCounts(c, 0, 0, 0, len(rejected))
		return c.JSON(http.StatusRequestEntityTooLarge, errorResponse{Error: "no coordinate small enough to store", Rejected: rejected})
	}
	setCounts(c, res.Stored, res.Duplicates, 0, len(rejected))
	return writeIngest(c, http.StatusOK, ingestResponse{Accepted: res.Stored, Duplicates: res.Duplicates, Rejected: rejected})
}

// mustSpool reports whether a request for devs would go to the spool now:
// NATS is away (not connected), or one of the devices has coordinates
// waiting there.
func (s *Server) mustSpool(devs []string, connected bool) bool {
	if s.spool == nil {
		return false // spool.mode reject: nothing to keep in order, a 503 at once
	}
	if !connected {
		return true
	}
	if s.spool.Empty() {
		return false
	}
	for _, d := range devs {
		if s.spool.Holds(d) {
			return true
		}
	}
	return false
}

// itemIndexes returns the request item index of each of the n valid
// coordinates: the items in order, skipping the rejected ones.
func itemIndexes(n int, rejected []coord.Rejection) []int {
	out := make([]int, 0, n)
	r := 0
	for item := 0; len(out) < n; item++ {
		if r < len(rejected) && rejected[r].Index == item {
			r++
			continue
		}
		out = append(out, item)
	}
	return out
}

// dropOversize removes the records whose message is over limit bytes and
// returns the rest with their item indexes and a rejection for each one
// removed.
func dropOversize(recs []spool.Record, items []int, limit int64) ([]spool.Record, []int, []coord.Rejection) {
	var rej []coord.Rejection
	keptRecs, keptItems := recs[:0:0], items[:0:0]
	for i := range recs {
		if size := MessageSize(&recs[i]); int64(size) > limit {
			rej = append(rej, coord.Rejection{Index: items[i], Error: fmt.Sprintf(
				"coordinate too large to store: its message is %d bytes and the NATS server takes at most %d (max_payload)", size, limit)})
			continue
		}
		keptRecs = append(keptRecs, recs[i])
		keptItems = append(keptItems, items[i])
	}
	return keptRecs, keptItems, rej
}

// mergeRejections adds more to rejected, keeping request order.
func mergeRejections(rejected, more []coord.Rejection) []coord.Rejection {
	out := append(rejected[:len(rejected):len(rejected)], more...)
	slices.SortStableFunc(out, func(a, b coord.Rejection) int { return a.Index - b.Index })
	return out
}

// writeIngest answers with r; the common answer without rejections is
// written without reflection.
func writeIngest(c echo.Context, code int, r ingestResponse) error {
	if len(r.Rejected) > 0 {
		return c.JSON(code, r)
	}
	b := make([]byte, 0, 96)
	b = append(b, `{"accepted":`...)
	b = strconv.AppendInt(b, int64(r.Accepted), 10)
	b = append(b, `,"duplicates":`...)
	b = strconv.AppendInt(b, int64(r.Duplicates), 10)
	if r.Spooled > 0 {
		b = append(b, `,"spooled":`...)
		b = strconv.AppendInt(b, int64(r.Spooled), 10)
	}
	b = append(b, `,"rejected":[]}`...)
	return c.JSONBlob(code, b)
}

// answerSpooled writes the coordinates JetStream did not take to the spool
// and answers 202, or 503 when there is no spool, it is full or it fails: a
// 2xx always means every accepted coordinate is on disk somewhere.
func (s *Server) answerSpooled(c echo.Context, recs []spool.Record, res PublishResult, rejected []coord.Rejection) error {
	if s.spool == nil {
		return s.unavailable(c, "coordinates could not be stored now; retry later")
	}
	if err := s.spool.Append(recs); err != nil {
		s.log.Error().Err(err).Str("request_id", requestID(c)).Int("coordinates", len(recs)).Msg("spool append failed; answering 503")
		if errors.Is(err, spool.ErrFull) {
			return s.unavailable(c, "coordinates could not be stored now and the local spool is full; retry later")
		}
		return s.unavailable(c, "coordinates could not be stored now; retry later")
	}
	s.metrics.spooled.Add(float64(len(recs)))
	setCounts(c, res.Stored, res.Duplicates, len(recs), len(rejected))
	return writeIngest(c, http.StatusAccepted, ingestResponse{Accepted: res.Stored, Duplicates: res.Duplicates, Spooled: len(recs), Rejected: rejected})
}

func (s *Server) unavailable(c echo.Context, msg string) error {
	c.Response().Header().Set(echo.HeaderRetryAfter, retryAfterSeconds)
	return c.JSON(http.StatusServiceUnavailable, errorResponse{Error: msg})
}

// replaySpool moves spooled coordinates into JetStream, oldest first, with
// their original message ids, whenever the stream can take them.
func (s *Server) replaySpool(ctx context.Context) {
	const batch = 256
	idle := 200 * time.Millisecond
	failures, checkpointFailures := 0, 0
	for {
		wait := idle
		if ok, _ := s.Ready(); (ok || s.draining.Load() && s.nc.IsConnected() && s.streamOK.Load()) && !s.spool.Empty() {
			recs, pos, err := s.spool.Peek(batch)
			for _, d := range s.spool.Damage() {
				s.log.Error().Str("spool", s.spool.Dir()).Str("damage", d).
					Msg("spool: damaged bytes skipped; the records in them are lost (the disk, or a write that failed and could not be undone)")
			}
			if err == nil && len(recs) == 0 {
				// Counted but nothing readable left: only damage lay ahead.
				// Moving past it puts the counts right.
				if err = s.spool.Commit(pos, nil); err == nil && !s.spool.Empty() {
					n, _ := s.spool.Stats()
					err = fmt.Errorf("the spool counts %d records but none could be read", n)
				}
			}
			if err == nil && len(recs) > 0 {
				// The subject as the stream takes it now: stream.subject_prefix
				// may have changed since the record was spooled, and no stream
				// would take the old subject.
				for i := range recs {
					if recs[i].Device != "" {
						recs[i].Subject = s.pub.subject(recs[i].Device)
					}
				}
				pctx, cancel := context.WithTimeout(ctx, s.opts.PublishTimeout+time.Second)
				res, perr := s.pub.Publish(pctx, recs)
				cancel()
				err = perr
				if err != nil && len(res.Failed) == 0 && len(res.TooLarge) > 0 {
					err = s.setAside(recs, res.TooLarge, perr)
				}
				if err == nil {
					err = s.spool.Commit(pos, recs)
					s.metrics.replayed.Add(float64(len(recs) - len(res.TooLarge)))
					s.metrics.accepted.Add(float64(res.Stored))
					s.metrics.duplicate.Add(float64(res.Duplicates))
				}
			}
			if errors.Is(err, spool.ErrCheckpoint) {
				// Stored, and the replay moved on; only a restart before
				// the next saved checkpoint would send these again.
				checkpointFailures++
				if checkpointFailures == 1 || checkpointFailures%100 == 0 {
					s.log.Error().Err(err).Int("failures", checkpointFailures).Str("spool", s.spool.Dir()).
						Msg("spool checkpoint not saved (disk full?); replay goes on, but a restart now would publish the records since the last saved checkpoint again")
				}
				err = nil
			} else if err == nil && checkpointFailures > 0 {
				checkpointFailures = 0
			}
			if err != nil {
				failures++
				if failures == 1 || failures%30 == 0 {
					s.log.Warn().Err(err).Int("failures", failures).Msg("spool replay failed; will retry")
				}
				wait = time.Second
			} else {
				if failures > 0 {
					s.log.Info().Msg("spool replay resumed")
				}
				failures = 0
				wait = 0
			}
		}
		if wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		} else if ctx.Err() != nil {
			return
		}
	}
}

// setAside moves the spooled records at the indexes in tooLarge, which the
// server refuses for their size and so can never store, to the spool's
// set-aside file: kept for the operator, out of the way of the records
// behind them.
func (s *Server) setAside(recs []spool.Record, tooLarge []int, cause error) error {
	aside := make([]spool.Record, len(tooLarge))
	for i, idx := range tooLarge {
		aside[i] = recs[idx]
	}
	if err := s.spool.SetAside(aside, cause.Error()); err != nil {
		return err
	}
	s.metrics.setAside.Add(float64(len(aside)))
	s.log.Error().Err(cause).Int("coordinates", len(aside)).Str("file", s.spool.AsidePath()).
		Msg("spooled coordinates the server refuses for their size were set aside (not retried); bridge set-aside --publish stores them once the limit allows")
	return nil
}

// readBody reads the request body into buf, at most http.max_body_bytes
// (after decompression when Content-Encoding is gzip).
func (s *Server) readBody(c echo.Context, buf *bytes.Buffer) error {
	r := c.Request()
	var body io.Reader = http.MaxBytesReader(c.Response(), r.Body, s.opts.MaxBodyBytes)
	switch enc := strings.ToLower(strings.TrimSpace(r.Header.Get(echo.HeaderContentEncoding))); enc {
	case "", "identity":
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(body)
		if err != nil {
			return echo.NewHTTPError(http.StatusBadRequest, "invalid gzip body: "+err.Error())
		}
		defer zr.Close()
		// The limit applies to what the body inflates to, too.
		body = &limitedReader{r: zr, n: s.opts.MaxBodyBytes}
	default:
		return echo.NewHTTPError(http.StatusUnsupportedMediaType, "Content-Encoding "+enc+" is not supported; send identity or gzip")
	}
	if _, err := buf.ReadFrom(body); err != nil {
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe) || errors.Is(err, errInflatedTooLarge):
			return s.tooLarge()
		case r.Header.Get(echo.HeaderContentEncoding) != "":
			return echo.NewHTTPError(http.StatusBadRequest, "invalid gzip body: "+err.Error())
		}
		return echo.NewHTTPError(http.StatusBadRequest, "reading request body: "+err.Error())
	}
	return nil
}

var errInflatedTooLarge = errors.New("inflated body too large")

// limitedReader fails once more than n bytes were read.
type limitedReader struct {
	r io.Reader
	n int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n < 0 {
		return 0, errInflatedTooLarge
	}
	if int64(len(p)) > l.n+1 {
		p = p[:l.n+1]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	if l.n < 0 {
		return n, errInflatedTooLarge
	}
	return n, err
}

func (s *Server) tooLarge() error {
	return echo.NewHTTPError(http.StatusRequestEntityTooLarge,
		"request body larger than "+strconv.FormatInt(s.opts.MaxBodyBytes, 10)+" bytes (http.max_body_bytes)")
}

// decodeError translates the decoder's errors to HTTP answers.
func decodeError(err error, maxBatch int) error {
	switch {
	case errors.Is(err, coord.ErrTooManyItems):
		return echo.NewHTTPError(http.StatusRequestEntityTooLarge, fmt.Sprintf("more than %d coordinates in one request (http.max_batch)", maxBatch))
	case errors.Is(err, coord.ErrUnsupportedMediaType):
		return echo.NewHTTPError(http.StatusUnsupportedMediaType, err.Error()+"; send application/json, application/x-www-form-urlencoded or query parameters")
	case errors.Is(err, coord.ErrEmpty):
		return echo.NewHTTPError(http.StatusUnprocessableEntity, err.Error())
	case errors.Is(err, coord.ErrMalformed):
		return echo.NewHTTPError(http.StatusBadRequest, err.Error())
	default:
		return echo.NewHTTPError(http.StatusBadRequest, err.Error())
	}
}

// handleError is Echo's error handler: every error answer is JSON
// {"error": "..."}; 5xx causes are logged once here (or where they are
// translated), never echoed to the client.
func (s *Server) handleError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	code := http.StatusInternalServerError
	msg := http.StatusText(code)
	var he *echo.HTTPError
	if errors.As(err, &he) {
		code = he.Code
		switch m := he.Message.(type) {
		case string:
			msg = m
		default:
			msg = http.StatusText(code)
		}
		if code == http.StatusNotFound {
			msg = "not found"
		} else if code == http.StatusMethodNotAllowed {
			msg = "method not allowed"
		}
	} else {
		s.log.Error().Err(err).Str("request_id", requestID(c)).Msg("internal error")
	}
	if code == http.StatusServiceUnavailable || code == http.StatusTooManyRequests {
		c.Response().Header().Set(echo.HeaderRetryAfter, retryAfterSeconds)
	}
	if c.Request().Method == http.MethodHead {
		_ = c.NoContent(code)
		return
	}
	_ = c.JSON(code, errorResponse{Error: msg})
}
