package forward

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Standard Webhooks header names (https://www.standardwebhooks.com).
const (
	HeaderWebhookID        = "webhook-id"
	HeaderWebhookTimestamp = "webhook-timestamp"
	HeaderWebhookSignature = "webhook-signature"
)

// signer signs requests by the Standard Webhooks scheme:
// webhook-signature is "v1," + base64(HMAC-SHA256(key, id + "." + unix
// seconds + "." + body)).
type signer struct{ key []byte }

// newSigner decodes a whsec_<base64> secret (the prefix may be left out).
// The error never repeats the secret.
func newSigner(secret string) (*signer, error) {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil {
		return nil, errors.New("signing secret: not whsec_ followed by standard base64")
	}
	if len(key) < 24 || len(key) > 64 {
		return nil, fmt.Errorf("signing secret: %d bytes, want 24 to 64", len(key))
	}
	return &signer{key: key}, nil
}

// sign sets the three webhook-* headers of h for body. It is called for every
// attempt, so a retried request carries a fresh timestamp (receivers reject
// old ones) and the same id.
func (s *signer) sign(h http.Header, id string, at time.Time, body []byte) {
	ts := strconv.FormatInt(at.Unix(), 10)
	mac := hmac.New(sha256.New, s.key)
	mac.Write([]byte(id))
	mac.Write([]byte{'.'})
	mac.Write([]byte(ts))
	mac.Write([]byte{'.'})
	mac.Write(body)
	sig := base64.StdEncoding.EncodeToString(mac.Sum(nil))
	h.Set(HeaderWebhookID, id)
	h.Set(HeaderWebhookTimestamp, ts)
	h.Set(HeaderWebhookSignature, "v1,"+sig)
}
