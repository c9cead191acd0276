//! Threat feeds as operators configure them: where a feed comes from, how
//! its text is read, and fetching it within a size limit. Applying a feed
//! to the lists is `Core::replace_feed`; scheduling is `feeds`.
use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use sha2::Digest;

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
    /// Skip lines that are not addresses (or broader than `[guards]`)
    /// instead of refusing the version.
    #[serde(default)]
    pub skip_invalid: bool,
    /// Accept a plain `http://` source (anyone on the path can change it).
    #[serde(default)]
    pub allow_http: bool,
    /// A version that adds, or removes, more than this share of the entries
    /// in force is refused (changes of up to `CHANGE_FLOOR` entries always
    /// pass); 0 turns the check off.
    #[serde(default = "default_max_change_percent")]
    pub max_change_percent: u32,
    /// The source's expected SHA-256 (hex): any other content is refused.
    #[serde(default)]
    pub sha256: Option<String>,
}

fn default_max_change_percent() -> u32 {
    50
}

/// Changes this small pass the `max_change_percent` check whatever the
/// feed's size: small feeds legitimately change a lot.
pub const CHANGE_FLOOR: usize = 100;

/// Why a version that adds `added` and removes `removed` of the `previous`
/// entries in force is refused, if it is. A first version always passes.
pub fn change_refused(
    previous: usize,
    added: usize,
    removed: usize,
    max_percent: u32,
) -> Option<String> {
    if max_percent == 0 || previous == 0 {
        return None;
    }
    let allowed = (previous.saturating_mul(max_percent as usize) / 100).max(CHANGE_FLOOR);
    (added > allowed || removed > allowed).then(|| {
        format!(
            "this version adds {added} and removes {removed} of the {previous} entries in force, more than max_change_percent = {max_percent} allows ({allowed}); refused. If the change is intended, raise max_change_percent for this feed (0 turns the check off)"
        )
    })
}

/// At most this much of a bad line goes into an error, escaped: a feed's
/// text is not ours, and errors reach logs and terminals.
const EXCERPT_CHARS: usize = 40;

/// A short, escaped excerpt of `line` for an error message.
pub fn excerpt(line: &str) -> String {
    let mut out: String = line
        .chars()
        .take(EXCERPT_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if line.chars().count() > EXCERPT_CHARS {
        out.push('…');
    }
    out
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
        if s.starts_with("http://") && !self.allow_http {
            return Err(format!(
                "source '{s}' is plain HTTP: anyone on the path could change the list; use https://, or set allow_http = true for a source on a network you trust"
            ));
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
        if let Some(h) = &self.sha256 {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "sha256 must be 64 hexadecimal digits, got '{}'",
                    excerpt(h)
                ));
            }
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
                    // The parser's message quotes the line: only a short,
                    // plain one is shown as it is.
                    let plain = line.len() <= EXCERPT_CHARS
                        && line.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
                    errors.push(if plain {
                        format!("line {}: {e}", i + 1)
                    } else {
                        format!(
                            "line {}: \"{}\" is not an address or prefix",
                            i + 1,
                            excerpt(line)
                        )
                    });
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
    if let Some(want) = &spec.sha256 {
        let got: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if !got.eq_ignore_ascii_case(want) {
            return Err(format!(
                "content does not match the pinned sha256 (got {got}, want {}): refused",
                want.to_ascii_lowercase()
            ));
        }
    }
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
            allow_http: false,
            max_change_percent: default_max_change_percent(),
            sha256: None,
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
        // Plain HTTP only on request.
        let mut s = spec("x", "http://feeds.internal/x.txt");
        assert!(s.validate().unwrap_err().contains("allow_http = true"));
        s.allow_http = true;
        assert!(s.validate().is_ok());
        let mut s = spec("x", "/x");
        s.sha256 = Some("abc".into());
        assert!(s.validate().unwrap_err().contains("64 hexadecimal"));
        s.sha256 = Some("a".repeat(64));
        assert!(s.validate().is_ok());
    }

    #[test]
    fn bad_lines_are_shown_short_and_escaped() {
        let hostile = format!("\u{1b}[2J{}", "x".repeat(5000));
        let e = parse(FeedFormat::Plain, &format!("192.0.2.1\n{hostile}\n"), false).unwrap_err();
        assert!(e.contains("line 2: \"\\u{1b}[2Jxxx"), "{e}");
        assert!(!e.contains('\u{1b}') && e.len() < 300, "{e}");
        // A short plain line keeps the parser's own message.
        let e = parse(FeedFormat::Plain, "10.1.2.3/8\n", false).unwrap_err();
        assert!(e.contains("host bits"), "{e}");
    }

    #[test]
    fn a_version_may_change_only_so_much() {
        assert_eq!(change_refused(0, 100_000, 0, 50), None, "a first version");
        assert_eq!(change_refused(1000, 500, 500, 50), None, "at the limit");
        assert!(change_refused(1000, 501, 0, 50).is_some());
        let e = change_refused(1000, 0, 900, 50).unwrap();
        assert!(
            e.contains("removes 900 of the 1000") && e.contains("max_change_percent = 50"),
            "{e}"
        );
        assert_eq!(change_refused(10, 100, 10, 50), None, "small changes pass");
        assert!(change_refused(10, 101, 0, 50).is_some());
        assert_eq!(change_refused(1000, 1000, 1000, 0), None, "off");
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
