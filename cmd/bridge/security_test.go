package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream/streamtest"
)

// testPKI writes a CA and a certificate for 127.0.0.1 signed by it.
func testPKI(t *testing.T) (caFile, certFile, keyFile string, pool *x509.CertPool, cert tls.Certificate) {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ubiqo test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	caFile, certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600)
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
	pool = x509.NewCertPool()
	pool.AddCert(caCert)
	cert, err = tls.X509KeyPair(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	if err != nil {
		t.Fatal(err)
	}
	return
}

// TestSecretsNeverLoggedTLSEverywhere is a full run with every secret set:
// HTTPS for the webhook, TLS and user/password to NATS, tokens and basic
// auth; right and wrong credentials are sent every way the bridge accepts
// them, with debug logging on. No secret may appear in any log line.
func TestSecretsNeverLoggedTLSEverywhere(t *testing.T) {
	caFile, certFile, keyFile, pool, cert := testPKI(t)
	const (
		natsUser  = "bridge-svc"
		natsPass  = "nats-Pass-0x51"
		tok1      = "tok-Alpha-93f1"
		tok2      = "tok-Bravo-11aa"
		basicPass = "basic-Pass-77"
		wrongTok  = "guess-Token-00"
	)
	ns := streamtest.RunWith(t, func(o *server.Options) {
		o.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		o.TLS = true
		o.Users = []*server.User{{Username: natsUser, Password: natsPass}}
	})
	natsURL := strings.Replace(ns.ClientURL(), "nats://", "tls://", 1)

	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	done := make(chan error, 1)
	t.Setenv("UBIQO_NATS_PASSWORD", natsPass)
	t.Setenv("UBIQO_AUTH_BASIC_PASSWORD", basicPass)
	go func() {
		done <- run(ctx, []string{
			"--http.addr", addr, "--http.tls_cert", certFile, "--http.tls_key", keyFile,
			"--nats.url", natsURL, "--nats.user", natsUser, "--nats.tls_ca", caFile,
			"--auth.tokens", tok1 + "," + tok2, "--auth.basic_user", "ubiqo",
			"--spool.dir", t.TempDir(), "--log.level", "debug", "--log.access", "all",
		}, io.Discard, logs)
	}()
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	base := "https://" + addr
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		select {
		case err := <-done:
			t.Fatalf("run exited: %v\n%s", err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready over TLS:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	body := `{"device_id":"sec-1","lat":1,"lon":2,"ts":1772359200}`
	type call struct {
		name  string
		path  string
		hdr   map[string]string
		basic [2]string
		want  int
	}
	calls := []call{
		{"bearer", "/webhook/ubiqo", map[string]string{"Authorization": "Bearer " + tok1}, [2]string{}, 200},
		{"header", "/webhook/ubiqo", map[string]string{"X-Ubiqo-Token": tok2}, [2]string{}, 200},
		{"query", "/webhook/ubiqo?token=" + url.QueryEscape(tok1), nil, [2]string{}, 200},
		{"basic", "/webhook/ubiqo", nil, [2]string{"ubiqo", basicPass}, 200},
		{"wrong bearer", "/webhook/ubiqo", map[string]string{"Authorization": "Bearer " + wrongTok}, [2]string{}, 401},
		{"wrong query", "/webhook/ubiqo?token=" + wrongTok, nil, [2]string{}, 401},
		{"wrong basic", "/webhook/ubiqo", nil, [2]string{"ubiqo", wrongTok}, 401},
	}
	for _, c := range calls {
		req, _ := http.NewRequest("POST", base+c.path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		for k, v := range c.hdr {
			req.Header.Set(k, v)
		}
		if c.basic[0] != "" {
			req.SetBasicAuth(c.basic[0], c.basic[1])
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("%s: %d, want %d", c.name, resp.StatusCode, c.want)
		}
	}
	// Plain HTTP to the TLS listener gets nothing useful.
	if resp, err := http.Get("http://" + addr + "/readyz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Error("plain HTTP served on the TLS listener")
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	out := logs.String()
	lines := strings.Count(out, "\n")
	for _, secret := range []string{natsPass, tok1, tok2, basicPass, wrongTok, url.QueryEscape(tok1)} {
		if strings.Contains(out, secret) {
			t.Errorf("secret %q found in the logs", secret)
		}
	}
	if !strings.Contains(out, `"status":401`) || !strings.Contains(out, "token=REDACTED") {
		t.Errorf("the run did not log what the test expects:\n%s", out)
	}
	t.Logf("grepped %d log lines of a full run for %d secrets: none found", lines, 6)
}
