"""Every limit in one place, unit last in the name (TigerBeetle style).

The node announces the wire limits in WELCOME and enforces them before decoding; the client
validates the same limits before it sends, so a bad event fails fast and locally.
"""

from __future__ import annotations

# --- event shape (docs/client.md, Send events) ---
account_id_max = 2**64 - 1
value_min = -(2**63)
value_max = 2**63 - 1
metric_code_bytes_max = 64
event_id_bytes_max = 64
properties_per_event_max = 16
property_key_bytes_max = 32
property_value_bytes_max = 64
future_skew_us_max = 5 * 60 * 1_000_000  # events more than 5 minutes ahead are rejected

# --- metric schemas (docs/semantics.md §4, §7) ---
dimensions_per_metric_max = 4
dimension_values_max = 8
thresholds_per_metric_max = 8
threshold_code_bytes_max = 64
billing_cycle_day_max = 28
period_seconds_default = 30 * 24 * 3600
period_seconds_min = 1

# --- wire (docs/protocol.md §10) ---
frame_bytes_max = 4 * 1024 * 1024
events_per_batch_max = 10_000
property_keys_per_batch_max = 256  # distinct property keys in one batch
string_bytes_max = 1024  # any other free-form string on the wire (client names, tokens)
list_page_events_max = 1000
list_page_alerts_max = 1000
group_by_keys_max = dimensions_per_metric_max
in_flight_requests_per_connection_max = 4096
alert_subscriptions_per_connection_max = 4096  # live or being set up, over all partitions
# Decode-time bounds (unimeter/wire/cborscan.py), checked on every frame before it is decoded:
# an item may weigh at most base + per_byte * its size, a unit being about 8 bytes of decoded
# memory, so no frame within frame_bytes_max costs more than ~36x its size in memory.
cbor_items_base_count = 256
# The heaviest real frames weigh ~3 units per byte (an Ingest whose events carry 16 two-letter
# properties each; a breakdown of 4096 one-letter cells): a unit is ~8 bytes of memory, so a
# frame that passes costs at most ~36 bytes of memory per byte, against ~72 for a bomb of maps.
cbor_items_per_byte_max = 4
cbor_depth_max = 16  # the deepest protocol item nests 7 containers
cbor_check_bytes_min = 512  # smaller frames skip the walk: at worst they cost a constant

# --- server ---
mailbox_partition_capacity = 1024
mailbox_partition_bytes_max = 32 * 1024 * 1024  # request frames waiting for one partition
mailbox_catalog_capacity = 256
mailbox_catalog_bytes_max = 4 * 1024 * 1024
# Raft traffic from peers has a lane of its own per replica, so client load never crowds out
# heartbeats and acknowledgements; a full lane pauses reading that peer's link (TCP flow
# control) until the replica drains it, instead of dropping messages.
mailbox_peer_capacity = 4096
mailbox_peer_bytes_max = 32 * 1024 * 1024
connections_max_default = 4096  # client connections per node (peers are not counted)
retention_days_default = 400
dedup_window_days_default = 35
producer_results_cached_max = 64  # recent results kept per producer for exact retry answers
partitions_default = 8
partitions_max = 4096
# A partition is snapshotted (by a forked child) once its log grew by this many entries or
# bytes; the WAL before the older of the two kept snapshots is then deleted. Replay costs about
# 3.5 us per event (~26 log bytes per event at batch 500), so 16 MiB is ~2 s of replay per
# partition after a crash; a snapshot costs 0.4-3.5 s per million stored events, capped at a
# tenth of a core by the scheduler (docs/benchmarks.md, Storage).
snapshot_entries_default = 100_000
snapshot_bytes_default = 16 * 1024 * 1024
wal_segment_bytes_default = 16 * 1024 * 1024  # compaction deletes whole segments: match the above
wal_segment_bytes_min = 4096

# Live alert pushes stop, and the subscription ends with BACKPRESSURE, once a connection has
# this many bytes waiting in its send buffer (beyond what the kernel holds): a subscriber that
# reads too slowly costs the node at most this, then catches up from its cursor by paging.
alert_push_buffer_bytes_max = 256 * 1024

# --- HTTP API ---
http_port_offset = 79  # the default HTTP port is the binary port + 79: 7001 -> 7080
http_body_bytes_max = 32 * 1024 * 1024
http_events_per_request_max = 100_000
http_request_timeout_s = 10.0  # forwarded requests and their retries, per HTTP request
http_alert_streams_max = 256  # live Server-Sent-Event alert streams per node
http_sse_keepalive_s = 15.0  # a comment line this often keeps idle streams (and proxies) open

# --- alert webhooks (unimeter/webhooks) ---
webhook_url_bytes_max = 2048
webhook_attempt_timeout_s = 10.0  # one POST, connecting included
webhook_in_flight_max = 64  # alerts of one partition being delivered at once
webhook_backoff_s_initial = 0.5
webhook_backoff_s_max = 60.0  # a receiver that is down is tried at least this often
webhook_progress_interval_s = 0.2  # delivery progress is logged (replicated) at most this often

# --- client ---
request_timeout_s_default = 30.0
map_refresh_s = 30.0
retry_backoff_s_initial = 0.01
retry_backoff_s_max = 1.0
# After a routing failure (a lost connection, NOT_LEADER, no leader yet) the backoff stops
# growing here: a failover ends within an election timeout, and each retry is one cheap round
# trip (a refused connect, or a NOT_LEADER naming the new leader), so retrying every ~0.1 s
# finds the new leader at once instead of up to a second late.
retry_backoff_s_routing_max = 0.1
alert_queue_max_default = 10_000  # alerts a subscription holds for a consumer that lags

assert frame_bytes_max >= events_per_batch_max * 64
assert mailbox_partition_bytes_max >= frame_bytes_max and mailbox_peer_bytes_max >= frame_bytes_max
assert retry_backoff_s_initial <= retry_backoff_s_routing_max <= retry_backoff_s_max
assert cbor_depth_max >= 8 and 1 <= cbor_items_per_byte_max <= 4
assert 0 < dimension_values_max < 255
assert properties_per_event_max >= dimensions_per_metric_max
assert 0 < webhook_backoff_s_initial <= webhook_backoff_s_max
