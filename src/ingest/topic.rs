//! Topic layout. Every topic may sit under a configurable prefix (for example
//! a tenant, or a test's namespace) that ends in `/`.

/// Where a publish came from, by topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `{prefix}em/v1/devices/{device}/telemetry`; the segment is unvalidated.
    Native(&'a str),
    /// `{prefix}owntracks/{user}/{device}`.
    OwnTracks(&'a str, &'a str),
    /// Anything else.
    Unknown,
}

/// Subscription filter for native telemetry.
pub fn native_filter(prefix: &str) -> String {
    format!("{prefix}em/v1/devices/+/telemetry")
}

/// Subscription filter for OwnTracks (exactly three levels, so the apps'
/// `/event`, `/cmd` and `/info` subtopics are not taken).
pub fn owntracks_filter(prefix: &str) -> String {
    format!("{prefix}owntracks/+/+")
}

/// The native telemetry topic of `device`.
pub fn native_topic(prefix: &str, device: &str) -> String {
    format!("{prefix}em/v1/devices/{device}/telemetry")
}

/// Parses `topic` under `prefix`.
pub fn route<'a>(topic: &'a str, prefix: &str) -> Route<'a> {
    let Some(rest) = topic.strip_prefix(prefix) else {
        return Route::Unknown;
    };
    let mut parts = rest.split('/');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("em"), Some("v1"), Some("devices"), Some(d), Some("telemetry"), None) => {
            Route::Native(d)
        }
        (Some("owntracks"), Some(u), Some(d), None, None, None)
            if !u.is_empty() && !d.is_empty() =>
        {
            Route::OwnTracks(u, d)
        }
        _ => Route::Unknown,
    }
}

/// The key that decides a message's shard: all messages of one device go to
/// one shard, so they are processed in arrival order.
pub fn shard_key<'a>(r: &Route<'a>) -> Option<(&'a str, &'a str)> {
    match *r {
        Route::Native(d) => Some(("", d)),
        Route::OwnTracks(u, d) => Some((u, d)),
        Route::Unknown => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route("em/v1/devices/dev-1/telemetry", ""),
            Route::Native("dev-1")
        );
        assert_eq!(
            route("t1/em/v1/devices/d/telemetry", "t1/"),
            Route::Native("d")
        );
        assert_eq!(route("em/v1/devices/d/telemetry", "t1/"), Route::Unknown);
        assert_eq!(
            route("owntracks/alice/phone", ""),
            Route::OwnTracks("alice", "phone")
        );
        assert_eq!(route("owntracks/alice/phone/event", ""), Route::Unknown);
        assert_eq!(route("em/v1/devices/a/b/telemetry", ""), Route::Unknown);
        assert_eq!(native_topic("p/", "d"), "p/em/v1/devices/d/telemetry");
    }
}
