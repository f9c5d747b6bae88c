// Package deploy holds no code: it owns the deployment files beside it
// (the NATS cluster configs, Prometheus rules, the Grafana dashboard,
// systemd units) and, in its tests, the checks that keep them, the
// repository's docker-compose.yml and its Dockerfile consistent with the
// configuration keys, binaries and metrics the code defines.
package deploy
