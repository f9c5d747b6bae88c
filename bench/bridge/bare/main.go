// Command bare is the HTTP ceiling of `make bench`: a net/http handler that
// reads the body and answers 200, nothing else.
package main

import (
	"flag"
	"io"
	"log"
	"net/http"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8090", "listen address")
	flag.Parse()
	http.HandleFunc("/webhook/ubiqo", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"accepted":1,"duplicates":0,"rejected":[]}`))
	})
	log.Fatal(http.ListenAndServe(*addr, nil))
}
