"""How big and how long each measurement is, for the quick (CI) and the full run.

Every run is bounded twice: by a count (frames pre-encoded, samples taken) and by a duration.
A throughput run ends when its duration is over or its pool of pre-encoded frames is used up,
whichever comes first; the figure is computed over the time actually spent.
"""

from __future__ import annotations

from dataclasses import dataclass

# The benchmark workload: 10,000 accounts, 5 SUM metrics, random values.
ACCOUNTS = 10_000
METRIC_CODES = ("bench.m0", "bench.m1", "bench.m2", "bench.m3", "bench.m4")
VALUE_MAX = 1_000
PARTITIONS = 8  # the node's default partition count
# The dimension the query scenario filters on (every preloaded event carries one value).
REGION_KEY = "region"
REGIONS = ("eu", "us", "apac", "latam")

# The realistic workload: what a billing producer sends (bench/workload.py). The same accounts;
# every event has a 36-byte UUID event id, a producer timestamp within the last hour and two
# properties; a COUNT metric declares both properties as dimensions, a SUM metric does not, and
# one event in ten is an ADD of a seat (a user id) to a COUNT_UNIQUE metric.
REAL_COUNT_CODE = "real.requests"
REAL_SUM_CODE = "real.bytes"
REAL_SEATS_CODE = "real.seats"
REAL_ENDPOINT_KEY = "endpoint"
REAL_ENDPOINTS = ("/v1/search", "/v1/items", "/v1/orders", "/v1/users")
REAL_REGION_KEY = "region"
REAL_REGIONS = ("eu", "us", "apac")
REAL_SEAT_EVERY = 10  # one event in ten is a seat ADD
REAL_SEATS_PER_ACCOUNT = 200  # seat (user) ids are drawn from 1..this, per account
REAL_TIME_SPAN_US = 3_600_000_000  # producer timestamps fall within the last hour

# Requests in flight per connection: enough to keep the node busy (and, for SYNC, to fill
# each group commit), small enough to stay under the partition mailboxes (1024 each).
WINDOW_ASYNC_B500 = 64
WINDOW_SYNC_B500 = 64
WINDOW_ASYNC_B1 = 256
WINDOW_SYNC_B1 = 1024
WINDOW_SCALING = 4  # per connection, for the 1/4/16/64-connection curve
SCALING_CONNECTIONS = (1, 4, 16, 64)

CHILD_START_S_MAX = 60.0  # a node or server that does not listen by then has failed
LOAD_SLACK_S = 60.0  # extra time a load run may take beyond its duration (setup, drain)
SETTLE_S_MAX = 120.0  # a node must apply what it has made durable (or recover) within this

# The cluster section: three nodes, every partition on all three (replication factor 3).
CLUSTER_NODES = 3
CLUSTER_READY_S_MAX = 60.0  # every partition led by its preferred node by then


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    name: str
    fsync_ops_max: int
    fsync_time_s_max: float
    rtt_pings: int
    codec_frames: int
    raw_duration_s: float
    ingest_duration_s: float
    scaling_duration_s: float
    # Per load-generator process; batch 500: enough for 1.2 M events/s (the ASYNC bar) over
    # the ingest duration, so a run at the bar does not use its pool up.
    pool_frames_b500: int
    pool_frames_realistic_b500: int  # enough for 0.6 M events/s (half the ASYNC bar)
    pool_frames_b1: int
    latency_samples: int
    latency_time_s_max: float
    query_preload_events: int
    query_samples: int
    client_duration_s: float
    client_query_samples: int
    server_query_samples: int
    apply_frames: int  # batches of 500 applied per layout and round (apply alone)
    range_read_samples: int  # per size (10k, 100k, 1M events in the account)
    range_read_time_s_max: float  # per size, after the first few reads
    call_count_requests: int  # per kind (one-event SYNC ingest, query), counted by cProfile
    memory_cells: int
    memory_events: int  # stored events added to a warm state (bytes per stored event)
    recovery_events: int  # stored in the recovery section's node: half of them make the cells
    profile_duration_s: float
    profile: bool
    two_process_runs: bool


QUICK = Settings(
    name="quick",
    fsync_ops_max=100,
    fsync_time_s_max=1.5,
    rtt_pings=3_000,
    codec_frames=200,
    raw_duration_s=1.0,
    ingest_duration_s=1.5,
    scaling_duration_s=1.0,
    pool_frames_b500=3_600,
    pool_frames_realistic_b500=1_800,
    pool_frames_b1=10_000,
    latency_samples=300,
    latency_time_s_max=4.0,
    query_preload_events=100_000,
    query_samples=1_000,
    client_duration_s=1.5,
    client_query_samples=500,
    server_query_samples=2_000,
    apply_frames=200,
    range_read_samples=50,
    range_read_time_s_max=3.0,
    call_count_requests=300,
    memory_cells=50_000,
    memory_events=200_000,
    recovery_events=100_000,
    profile_duration_s=3.0,
    profile=False,
    two_process_runs=True,
)

FULL = Settings(
    name="full",
    fsync_ops_max=1_000,
    fsync_time_s_max=8.0,
    rtt_pings=20_000,
    codec_frames=2_000,
    raw_duration_s=4.0,
    ingest_duration_s=6.0,
    scaling_duration_s=3.0,
    pool_frames_b500=14_400,
    pool_frames_realistic_b500=7_200,
    pool_frames_b1=100_000,
    latency_samples=3_000,
    latency_time_s_max=30.0,
    query_preload_events=500_000,
    query_samples=10_000,
    client_duration_s=5.0,
    client_query_samples=3_000,
    server_query_samples=20_000,
    apply_frames=2_000,
    range_read_samples=500,
    range_read_time_s_max=15.0,
    call_count_requests=2_000,
    memory_cells=1_000_000,
    memory_events=1_000_000,
    recovery_events=2_000_000,
    profile_duration_s=10.0,
    profile=True,
    two_process_runs=True,
)
