// Package forward owns the forwarder: UBIQO's "HTTP backup" as a durable,
// retrying, per-device ordered delivery of every coordinate on COORDS to one
// or more secondary HTTP servers (targets), with a dead-letter queue and a
// way to re-drive it.
//
// # One consumer per target
//
// Each target has its own durable consumer forward-<name>, run by its own
// subscribers.Runtime with an AsyncHandler, its own HTTP client, circuit
// breaker and workers. Nothing is shared between targets but the NATS
// connection, so a dead target never delays another.
//
// # Per-device order
//
// A device's next coordinate is not sent to a target before the previous one
// was delivered (2xx) or given up (dead-lettered). JetStream alone does not
// give that: a message NakWithDelay'ed is redelivered after later messages of
// the same subject were already handed out. So the forwarder never uses Nak
// to retry. Instead:
//
//   - The runtime dispatches each message to HandleAsync, which only files it
//     in its device's queue (ordered by stream sequence) and returns.
//   - A device with a queued message and nothing in flight is "ready";
//     Concurrency workers take ready devices in turn, send the head of the
//     queue (or, for the batch format, the heads of several devices, a
//     device's consecutive messages kept together and in order) and settle
//     it. Only then is the device ready again. Other devices keep flowing.
//   - A retryable failure keeps the message at the head of its device: it is
//     retried in this process after an exponential back-off with full jitter
//     (or the target's Retry-After), with no worker held while it waits. The
//     runtime calls InProgress on every unsettled message, so the server does
//     not redeliver what the forwarder holds.
//   - A message is settled only when delivered (Ack), given up (Permanent:
//     DLQ copy + Term), or at shutdown, when every held message is handed back
//     with an immediate Nak in stream order, so the next run gets them first
//     and in order.
//
// Across a crash (no Nak at shutdown) the server redelivers the messages the
// dead process held only after AckWait, while newer messages flow at once;
// even after a clean stop a redelivery can go astray (to the stopped run's
// pull request) and come back only after AckWait. So at start a target reads
// its consumer's state: when messages are pending from an earlier run,
// nothing is sent until that many messages at or below that run's last
// delivered sequence came back, or AckWait plus a grace period passed. Since
// device queues are ordered by stream sequence, each device then starts with
// its oldest coordinate. Usually that wait is milliseconds.
//
// A redelivery of a message this run already settled (its ack reached the
// server after AckWait, e.g. a starved process) is recognised by its exact
// stream sequence and acked, never sent again after its device's later
// coordinates. Anything else is sent, even late: a delivery lost on the way
// (a connection that broke with it in a pull response) comes back after
// AckWait, after its device's next coordinate went, and is sent then and
// counted out of order; a message whose DLQ copy failed was nak'ed by the
// runtime and is given up again when it comes back. Nothing is acked unsent.
//
// Delivery is at least once: a coordinate delivered just before a crash,
// whose ack was lost, is delivered again; receivers dedupe on webhook-id /
// Ubiqo-Msg-Id.
//
// Run one forwarder process per target set: two processes on the same durable
// would each hold part of a device's messages and could not keep its order.
//
// # Outcomes
//
// 2xx: delivered. 408, 429, 5xx, timeouts and network errors: retried, up to
// MaxDeliver attempts or until the coordinate is older than MaxAge; 429 and
// 503 with Retry-After (seconds or an HTTP date) pause the whole target that
// long. Any other status: permanent, dead-lettered at once with the target's
// status and (capped) answer. The DLQ subject is
// ubiqo.dlq.forward-<name>.<token>.
//
// A circuit breaker per target opens after BreakerFailures consecutive
// retryable failures: while open nothing is sent and nothing is dropped
// (attempts do not count against MaxDeliver); after BreakerCooldown one probe
// request goes out, and only its success releases the rest.
//
// # Re-drive
//
// Redrive reads a target's DLQ subjects in order and delivers each message
// straight to the target with the same request code (format, headers,
// signature), then deletes it from the DLQ. It does not republish to COORDS:
// that stream dedupes by Nats-Msg-Id within its duplicate window and would
// hand the coordinate to every subscriber again.
package forward
