//! Threat feeds as operators configure them: where a feed comes from, how
//! its text is read, and fetching it within a size limit. Applying a feed
//! to the lists is `Core::replace_feed`; scheduling is `feeds`.
use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use rampart_common::decide::List;

use crate::prefix::Prefix;

/// Feeds are tracked by a bit each in the list registry.
pub const MAX_FEEDS: usize = 64;

/// How a feed's lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedFormat {
    /// One address or CIDR prefix per line; `#` starts a comment.
    #[default]
    Plain,
    /// Spamhaus DROP/EDROP: `prefix ; SBL id`; `;` starts a comment.
    Spamhaus,
    /// FireHOL `.netset`/`.ipset`: one address or prefix per line, `#` comments.
    Netset,
}

impl FeedFormat {
    fn comment(self) -> char {
        match self {
            Self::Spamhaus => ';',
            Self::Plain | Self::Netset => '#',
        }
    }
}

/// One `[[feed]]` of the config file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedSpec {
    pub name: String,
    /// A local path, a `file://` URL or an `http://`/`https://` URL.
    pub source: String,
    #[serde(default)]
    pub format: FeedFormat,
    /// Which list the feed's entries go on (a blocklist unless it says).
    #[serde(default = "default_action")]
    pub action: List,
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh: Duration,
    /// A larger feed is refused (the last good version stays).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Skip lines that are not addresses instead of refusing the version.
    #[serde(default)]
    pub skip_invalid: bool,
}

fn default_action() -> List {
    List::Block
}

fn default_refresh() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_max_bytes() -> u64 {
    64 << 20
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Where a feed is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    Url(String),
}

impl FeedSpec {
    pub fn location(&self) -> Result<Location, String> {
        let s = self.source.trim();
        if let Some(path) = s.strip_prefix("file://") {
            return Ok(Location::File(PathBuf::from(path)));
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            return reqwest::Url::parse(s)
                .map(|_| Location::Url(s.to_string()))
                .map_err(|e| format!("source '{s}' is not a valid URL: {e}"));
        }
        if s.starts_with('/') {
            return Ok(Location::File(PathBuf::from(s)));
        }
        Err(format!(
            "source '{s}' must be an absolute path, a file:// URL or an http(s):// URL"
        ))
    }

    pub fn validate(&self) -> Result<(), String> {
        let n = &self.name;
        if n.is_empty()
            || n.len() > 64
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || n.starts_with('.')
        {
            return Err(format!(
                "name '{n}' must be 1 to 64 characters of letters, digits, '-', '_' and '.' (not starting with '.')"
            ));
        }
        self.location()?;
        if self.refresh < Duration::from_secs(10) {
            return Err(format!(
                "refresh {} is too short (at least 10s)",
                humantime::format_duration(self.refresh)
            ));
        }
        if !(1..=1 << 30).contains(&self.max_bytes) {
            return Err(format!(
                "max_bytes must be 1 to 1073741824, got {}",
                self.max_bytes
            ));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(600) {
            return Err("timeout must be between 1s and 10m".into());
        }
        Ok(())
    }
}

/// A feed version read from its text.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ParsedFeed {
    /// Distinct prefixes, sorted.
    pub prefixes: Vec<Prefix>,
    /// Lines skipped as invalid (only with `skip_invalid`).
    pub invalid: u64,
}

/// Reads a feed's text. Any invalid line refuses the whole version unless
/// `skip_invalid`; an empty feed is refused too (a truncated download looks
/// like one), so the last good version stays.
pub fn parse(format: FeedFormat, text: &str, skip_invalid: bool) -> Result<ParsedFeed, String> {
    let mut out = ParsedFeed::default();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw
            .split(format.comment())
            .next()
            .unwrap_or("")
            .trim()
            .trim_start_matches('\u{feff}');
        if line.is_empty() {
            continue;
        }
        match line.parse::<Prefix>() {
            Ok(p) => out.prefixes.push(p),
            Err(_) if skip_invalid => out.invalid += 1,
            Err(e) => {
                if errors.len() < 5 {
                    errors.push(format!("line {}: {e}", i + 1));
                }
                out.invalid += 1;
            }
        }
    }
    if !errors.is_empty() {
        return Err(format!(
            "{} invalid line(s), e.g. {} (set skip_invalid = true to load the valid lines)",
            out.invalid,
            errors.join("; ")
        ));
    }
    out.prefixes.sort_unstable();
    out.prefixes.dedup();
    if out.prefixes.is_empty() {
        return Err(
            "the feed has no entries (refused: an empty download usually means a broken source)"
                .into(),
        );
    }
    Ok(out)
}

/// Fetches a feed's text, refusing more than `max_bytes`.
pub async fn fetch(spec: &FeedSpec, client: &reqwest::Client) -> Result<String, String> {
    let max = spec.max_bytes;
    let too_big = || format!("larger than max_bytes = {max}");
    let bytes = match spec.location()? {
        Location::File(path) => {
            use tokio::io::AsyncReadExt;
            let f = tokio::fs::File::open(&path)
                .await
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            let mut buf = Vec::new();
            f.take(max + 1)
                .read_to_end(&mut buf)
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if buf.len() as u64 > max {
                return Err(too_big());
            }
            buf
        }
        Location::Url(url) => {
            let resp = client
                .get(&url)
                .timeout(spec.timeout)
                .send()
                .await
                .map_err(|e| format!("cannot fetch {url}: {}", error_chain(&e)))?;
            if !resp.status().is_success() {
                return Err(format!("{url} answered {}", resp.status()));
            }
            read_capped(resp, max)
                .await
                .map_err(|e| e.unwrap_or_else(too_big))?
        }
    };
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// Reads a response body of at most `max` bytes. `Err(None)`: larger
/// than `max`; `Err(Some(e))`: the read failed.
pub async fn read_capped(mut resp: reqwest::Response, max: u64) -> Result<Vec<u8>, Option<String>> {
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(None);
    }
    let url = resp.url().to_string();
    let mut buf = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| Some(format!("reading {url}: {}", error_chain(&e))))?
    {
        if (buf.len() + chunk.len()) as u64 > max {
            return Err(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// An error and its causes on one line (reqwest hides the useful part).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn each_format_reads_its_comments() {
        let plain = "# list\n192.0.2.1\n\n198.51.100.0/24  # office\n2001:db8::/32\n";
        let f = parse(FeedFormat::Plain, plain, false).unwrap();
        assert_eq!(
            f.prefixes,
            vec![p("192.0.2.1"), p("198.51.100.0/24"), p("2001:db8::/32")]
        );
        let drop = "; Spamhaus DROP List 2026/11/24\n; Expires: x\n1.10.16.0/20 ; SBL256894\n1.19.0.0/16 ; SBL434604\n";
        let f = parse(FeedFormat::Spamhaus, drop, false).unwrap();
        assert_eq!(f.prefixes, vec![p("1.10.16.0/20"), p("1.19.0.0/16")]);
        let netset = "#\n# firehol_level1\n#\n0.0.0.0/8\n1.10.16.0/20\n";
        let f = parse(FeedFormat::Netset, netset, false).unwrap();
        assert_eq!(f.prefixes.len(), 2);
    }

    #[test]
    fn duplicates_collapse() {
        let f = parse(FeedFormat::Plain, "192.0.2.1\n192.0.2.1/32\n", false).unwrap();
        assert_eq!(f.prefixes, vec![p("192.0.2.1")]);
    }

    #[test]
    fn bad_lines_refuse_the_version_or_are_skipped_on_request() {
        let text = "192.0.2.1\nnot-an-ip\n10.1.2.3/8\n";
        let e = parse(FeedFormat::Plain, text, false).unwrap_err();
        assert!(e.contains("2 invalid line(s)"), "{e}");
        assert!(e.contains("line 2:") && e.contains("line 3:"), "{e}");
        let f = parse(FeedFormat::Plain, text, true).unwrap();
        assert_eq!((f.prefixes.len(), f.invalid), (1, 2));
    }

    #[test]
    fn empty_feeds_are_refused() {
        for text in ["", "# nothing\n\n", "; only comments\n"] {
            assert!(
                parse(FeedFormat::Spamhaus, text, false).is_err(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn the_spamhaus_comment_is_not_a_plain_comment() {
        assert!(parse(FeedFormat::Plain, "1.10.16.0/20 ; SBL256894\n", false).is_err());
    }

    #[test]
    fn sources_and_names_are_checked() {
        let spec = |name: &str, source: &str| FeedSpec {
            name: name.into(),
            source: source.into(),
            format: FeedFormat::Plain,
            action: List::Block,
            refresh: default_refresh(),
            max_bytes: default_max_bytes(),
            timeout: default_timeout(),
            skip_invalid: false,
        };
        assert!(
            spec("drop", "https://www.spamhaus.org/drop/drop.txt")
                .validate()
                .is_ok()
        );
        assert!(spec("own", "/etc/rampart/feeds/own.txt").validate().is_ok());
        assert!(spec("own", "file:///srv/x").validate().is_ok());
        assert!(
            spec("own", "relative/path")
                .validate()
                .unwrap_err()
                .contains("absolute")
        );
        assert!(spec("own", "ftp://x/y").validate().is_err());
        assert!(spec("a b", "/x").validate().unwrap_err().contains("name"));
        assert!(spec("", "/x").validate().is_err());
        let mut s = spec("x", "/x");
        s.refresh = Duration::from_secs(1);
        assert!(s.validate().unwrap_err().contains("refresh"));
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(2000)))]
            /// Any text gives a value or an error, never a panic; every
            /// accepted prefix is one the line said.
            #[test]
            fn any_text_parses_or_errs(text in "(?s).{0,400}", skip in any::<bool>()) {
                for fmt in [FeedFormat::Plain, FeedFormat::Spamhaus, FeedFormat::Netset] {
                    if let Ok(f) = parse(fmt, &text, skip) {
                        prop_assert!(!f.prefixes.is_empty());
                    }
                }
            }

            #[test]
            fn address_like_lines_never_panic(
                lines in proptest::collection::vec("[0-9a-fA-F:./ ;#x]{0,45}", 0..40)
            ) {
                let text = lines.join("\n");
                for fmt in [FeedFormat::Plain, FeedFormat::Spamhaus, FeedFormat::Netset] {
                    let _ = parse(fmt, &text, true);
                    let _ = parse(fmt, &text, false);
                }
            }
        }
    }
}
