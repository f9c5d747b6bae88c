// Command floor is the floor of `make bench`: a net/http handler that
// publishes the request body, as it came, through ubiqo-bridge's publisher
// (a Nats-Msg-Id and the Ubiqo-Device header, one of 10,000 device
// subjects) and answers 200 once JetStream acked it. No decoding, no Echo,
// no logs, no metrics: it does only what every bridge that answers after
// the ack must do, so it shows how far any such bridge built on net/http
// and nats.go can go on the machine.
package main

import (
	"context"
	"flag"
	"io"
	"log"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/spool"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8092", "listen address")
	url := flag.String("nats", nats.DefaultURL, "NATS URL")
	flag.Parse()
	nc, err := nats.Connect(*url)
	if err != nil {
		log.Fatal(err)
	}
	p, err := bridge.NewPublisher(nc, "ubiqo.coords", 4096, 5*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	var n atomic.Uint64
	http.HandleFunc("/webhook/ubiqo", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		i := n.Add(1) // unique ids: nothing is a duplicate
		dev := "d" + strconv.FormatUint(i%10000, 10)
		rec := []spool.Record{{Subject: "ubiqo.coords." + dev, MsgID: "floor-" + strconv.FormatUint(i, 36), Device: dev, Data: body}}
		if _, err := p.Publish(context.Background(), rec); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"accepted":1,"duplicates":0,"rejected":[]}`))
	})
	log.Fatal(http.ListenAndServe(*addr, nil))
}
