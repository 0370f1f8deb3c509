//! Metric names shared by the agent (which samples them) and the collector (which exposes them
//! as `vigil_host_<name>` or `vigil_<name>`). `docs/reference.md` lists them: a change here changes it too.

/// Host metrics: the agent sends `name`, the collector exposes `vigil_host_<name>`.
pub const CPU_USAGE_RATIO: &str = "cpu_usage_ratio";
pub const LOAD1: &str = "load1";
pub const LOAD5: &str = "load5";
pub const LOAD15: &str = "load15";
pub const MEMORY_USED_BYTES: &str = "memory_used_bytes";
pub const MEMORY_TOTAL_BYTES: &str = "memory_total_bytes";
pub const SWAP_USED_BYTES: &str = "swap_used_bytes";
pub const FILESYSTEM_USED_RATIO: &str = "filesystem_used_ratio";
pub const FILESYSTEM_SIZE_BYTES: &str = "filesystem_size_bytes";
pub const NETWORK_RECEIVE_BYTES_TOTAL: &str = "network_receive_bytes_total";
pub const NETWORK_TRANSMIT_BYTES_TOTAL: &str = "network_transmit_bytes_total";
pub const UPTIME_SECONDS: &str = "uptime_seconds";

/// Check results: exposed as `vigil_check_up{check}` and `vigil_check_latency_seconds{check}`.
pub const CHECK_UP: &str = "check_up";
pub const CHECK_LATENCY_SECONDS: &str = "check_latency_seconds";

/// Every host metric name with its Prometheus type and help text, in exposition order.
/// `labels` are the label names the agent attaches (besides `host`, which the collector adds).
pub struct HostMetric {
    pub name: &'static str,
    pub counter: bool,
    pub help: &'static str,
    pub labels: &'static [&'static str],
}

pub const HOST_METRICS: &[HostMetric] = &[
    HostMetric {
        name: CPU_USAGE_RATIO,
        counter: false,
        help: "CPU busy ratio over the last interval (0..1).",
        labels: &[],
    },
    HostMetric {
        name: LOAD1,
        counter: false,
        help: "1-minute load average.",
        labels: &[],
    },
    HostMetric {
        name: LOAD5,
        counter: false,
        help: "5-minute load average.",
        labels: &[],
    },
    HostMetric {
        name: LOAD15,
        counter: false,
        help: "15-minute load average.",
        labels: &[],
    },
    HostMetric {
        name: MEMORY_USED_BYTES,
        counter: false,
        help: "Memory in use, bytes.",
        labels: &[],
    },
    HostMetric {
        name: MEMORY_TOTAL_BYTES,
        counter: false,
        help: "Total memory, bytes.",
        labels: &[],
    },
    HostMetric {
        name: SWAP_USED_BYTES,
        counter: false,
        help: "Swap in use, bytes.",
        labels: &[],
    },
    HostMetric {
        name: FILESYSTEM_USED_RATIO,
        counter: false,
        help: "Filesystem space used ratio (0..1).",
        labels: &["mountpoint", "device"],
    },
    HostMetric {
        name: FILESYSTEM_SIZE_BYTES,
        counter: false,
        help: "Filesystem size, bytes.",
        labels: &["mountpoint", "device"],
    },
    HostMetric {
        name: NETWORK_RECEIVE_BYTES_TOTAL,
        counter: true,
        help: "Bytes received on the interface.",
        labels: &["interface"],
    },
    HostMetric {
        name: NETWORK_TRANSMIT_BYTES_TOTAL,
        counter: true,
        help: "Bytes transmitted on the interface.",
        labels: &["interface"],
    },
    HostMetric {
        name: UPTIME_SECONDS,
        counter: false,
        help: "Seconds since the host booted.",
        labels: &[],
    },
];

/// Looks up a host metric by its wire name.
pub fn host_metric(name: &str) -> Option<&'static HostMetric> {
    HOST_METRICS.iter().find(|m| m.name == name)
}
