package bridge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
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
		if _, err := buf.ReadFrom(http.MaxBytesReader(c.Response(), r.Body, s.opts.MaxBodyBytes)); err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return s.tooLarge()
			}
			return echo.NewHTTPError(http.StatusBadRequest, "reading request body: "+err.Error())
		}
	}

	var query url.Values
	if buf.Len() == 0 {
		query = r.URL.Query()
	}
	batch, err := s.dec.Decode(r.Header.Get(echo.HeaderContentType), buf.Bytes(), query, time.Now())
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

	ctx, cancel := context.WithTimeout(r.Context(), s.opts.RequestTimeout)
	defer cancel()
	start := time.Now()
	res, err := s.pub.Publish(ctx, batch.Coords)
	s.metrics.publish.Observe(time.Since(start).Seconds())
	s.metrics.accepted.Add(float64(res.Stored))
	s.metrics.duplicate.Add(float64(res.Duplicates))
	if err != nil {
		s.log.Error().Err(err).Str("request_id", requestID(c)).Int("coordinates", len(batch.Coords)).
			Int("stored", res.Stored).Msg("coordinates not stored; answering 503")
		c.Response().Header().Set(echo.HeaderRetryAfter, retryAfterSeconds)
		return c.JSON(http.StatusServiceUnavailable, errorResponse{Error: "coordinates could not be stored now; retry later"})
	}
	setCounts(c, res.Stored, res.Duplicates, len(batch.Rejected))
	return c.JSON(http.StatusOK, ingestResponse{Accepted: res.Stored, Duplicates: res.Duplicates, Rejected: rejected})
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
