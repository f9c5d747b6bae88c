// Command naive is the bridge a user writes in twenty lines, the baseline of
// `make bench`: Echo, encoding/json, one synchronous JetStream publish per
// coordinate (no dedupe ids, no spool, no metrics, no logs).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8091", "listen address")
	url := flag.String("nats", nats.DefaultURL, "NATS URL")
	flag.Parse()
	nc, err := nats.Connect(*url)
	if err != nil {
		log.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	e := echo.New()
	e.HideBanner = true
	e.POST("/webhook/ubiqo", func(c echo.Context) error {
		var body any
		if err := json.NewDecoder(c.Request().Body).Decode(&body); err != nil {
			return c.JSON(http.StatusBadRequest, map[string]string{"error": err.Error()})
		}
		items, ok := body.([]any)
		if !ok {
			items = []any{body}
		}
		for _, it := range items {
			m, _ := it.(map[string]any)
			id := ""
			for _, k := range []string{"device_id", "deviceId", "imei", "uniqueId", "id", "dispositivo"} {
				if v, ok := m[k]; ok {
					id = fmt.Sprint(v)
					break
				}
			}
			id = strings.Map(func(r rune) rune {
				if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
					return r
				}
				return '_'
			}, id)
			data, _ := json.Marshal(m)
			if _, err := js.Publish(c.Request().Context(), "ubiqo.coords."+id, data); err != nil {
				return c.JSON(http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
			}
		}
		return c.JSON(http.StatusOK, map[string]int{"accepted": len(items)})
	})
	log.Fatal(e.Start(*addr))
}
