//! The kernel matrix: Debian's own kernel packages, fetched with apt into a
//! cache of Rampart's own and kept there, so each kernel is downloaded once
//! per machine. The host's apt configuration is read, never changed: the
//! archive's addresses come from the host's Debian sources, and the
//! backports suite is added beside them in a private source list.
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::cmd;

/// One kernel of the matrix: a version of Debian's `linux-image-amd64`
/// meta-package, which names the image package to fetch.
#[derive(Debug)]
pub(crate) struct Kernel {
    /// What `--kernels` calls it.
    pub name: &'static str,
    /// The meta-package versions that pull this kernel in.
    meta_version_prefix: &'static str,
}

/// Debian 12's own kernel (bookworm, updated through bookworm-security),
/// and the one bookworm-backports carries.
pub(crate) const MATRIX: &[Kernel] = &[
    Kernel {
        name: "6.1",
        meta_version_prefix: "6.1.",
    },
    Kernel {
        name: "6.12",
        meta_version_prefix: "6.12.",
    },
];

/// The suites the private source list offers: the release, its security
/// updates, and its backports.
const SUITES: &[&str] = &["bookworm", "bookworm-security", "bookworm-backports"];

/// A kernel ready to boot: its image and the modules the tests load.
pub(crate) struct Fetched {
    pub name: &'static str,
    /// `uname -r` of the kernel, e.g. `6.1.0-57-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// Modules the VM's init loads, uncompressed (`veth`).
    pub modules: Vec<PathBuf>,
}

/// Modules the tests need that Debian builds as modules.
const MODULES: &[&str] = &["kernel/drivers/net/veth.ko"];

/// Where kernels (and apt's lists for them) are kept between runs, outside
/// any clone: `RAMPART_VM_CACHE`, or `/var/cache/rampart-vm`.
pub(crate) fn cache_dir() -> PathBuf {
    std::env::var_os("RAMPART_VM_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/rampart-vm"), PathBuf::from)
}

/// The kernels `--kernels` names: a comma-separated list of matrix names,
/// `all` (the default) or `none`.
pub(crate) fn select(spec: &str) -> anyhow::Result<Vec<&'static Kernel>> {
    match spec.trim() {
        "all" => return Ok(MATRIX.iter().collect()),
        "none" | "" => return Ok(Vec::new()),
        _ => {}
    }
    spec.split(',')
        .map(str::trim)
        .map(|want| {
            MATRIX.iter().find(|k| k.name == want).with_context(|| {
                let names: Vec<&str> = MATRIX.iter().map(|k| k.name).collect();
                format!(
                    "--kernels: no kernel '{want}' in the matrix; choose from {}, or 'all' or 'none'",
                    names.join(", ")
                )
            })
        })
        .collect()
}

/// The kernel from the cache, fetched first if it is not there.
pub(crate) fn fetch(kernel: &'static Kernel) -> anyhow::Result<Fetched> {
    let dir = cache_dir().join("kernels").join(kernel.name);
    if let Some(k) = cached(kernel, &dir) {
        return Ok(k);
    }
    eprintln!(
        "kernels: fetching Debian's {} kernel into {}",
        kernel.name,
        dir.display()
    );
    download(kernel, &dir).with_context(|| {
        format!(
            "fetching the {} kernel (remove {} and retry; apt needs the Debian archive)",
            kernel.name,
            dir.display()
        )
    })?;
    cached(kernel, &dir).context("the kernel was fetched but its files are missing")
}

fn cached(kernel: &'static Kernel, dir: &Path) -> Option<Fetched> {
    let release = std::fs::read_to_string(dir.join("release")).ok()?;
    let vmlinuz = dir.join("vmlinuz");
    let modules: Vec<PathBuf> = MODULES.iter().map(|m| dir.join(module_file(m))).collect();
    (vmlinuz.is_file() && modules.iter().all(|m| m.is_file())).then(|| Fetched {
        name: kernel.name,
        release: release.trim().to_string(),
        vmlinuz,
        modules,
    })
}

fn module_file(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn download(kernel: &Kernel, dir: &Path) -> anyhow::Result<()> {
    let apt = Apt::new(&cache_dir().join("apt"))?;
    apt.update()?;
    let (package, version) = apt.image_package(kernel.meta_version_prefix)?;
    let work = cache_dir().join("work").join(kernel.name);
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    apt.download(&package, &version, &work)?;
    let deb = std::fs::read_dir(&work)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb"))?;
    let tree = work.join("x");
    cmd::run("dpkg-deb", &["-x", path_str(&deb)?, path_str(&tree)?])?;
    let modules_root = std::fs::read_dir(tree.join("lib/modules"))
        .context("the package has no lib/modules")?
        .filter_map(Result::ok)
        .next()
        .context("the package's lib/modules is empty")?;
    let release = modules_root.file_name().to_string_lossy().into_owned();

    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    std::fs::copy(
        tree.join("boot").join(format!("vmlinuz-{release}")),
        dir.join("vmlinuz"),
    )
    .context("copying vmlinuz")?;
    for m in MODULES {
        let plain = modules_root.path().join(m);
        let out = dir.join(module_file(m));
        if plain.is_file() {
            std::fs::copy(&plain, &out)?;
        } else {
            // Newer Debian kernels ship their modules xz-compressed; the
            // VM's busybox insmod takes them plain.
            let xz = format!("{}.xz", plain.display());
            let bytes = std::process::Command::new("xz")
                .args(["-dc", &xz])
                .output()
                .context("running xz")?;
            if !bytes.status.success() {
                bail!("xz -dc {xz} failed");
            }
            std::fs::write(&out, bytes.stdout)?;
        }
    }
    // Written last: its presence marks the cache entry complete.
    std::fs::write(dir.join("release"), &release)?;
    let _ = std::fs::remove_dir_all(&work);
    eprintln!(
        "kernels: {} is {release} ({package} {version})",
        kernel.name
    );
    Ok(())
}

/// A path as the `&str` a command line takes.
pub(crate) fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("path is not UTF-8: {}", p.display()))
}

/// apt with its own source list, lists and archive, so the host's package
/// state is untouched.
struct Apt {
    options: Vec<String>,
}

impl Apt {
    fn new(root: &Path) -> anyhow::Result<Self> {
        for d in ["lists/partial", "archives/partial", "sources.d"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        let sources = root.join("sources.d/rampart-kernels.sources");
        std::fs::write(&sources, private_sources()?)?;
        let options = [
            format!("Dir::Etc::SourceList={}", root.join("none.list").display()),
            format!("Dir::Etc::SourceParts={}", root.join("sources.d").display()),
            format!("Dir::State::Lists={}", root.join("lists").display()),
            format!("Dir::Cache::Archives={}", root.join("archives").display()),
            // Private lists and archive: the host's apt lock is not ours to take.
            "Debug::NoLocking=1".to_string(),
            // The download lands in a root-owned folder.
            "APT::Sandbox::User=root".to_string(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect();
        Ok(Self { options })
    }

    fn args<'a>(&'a self, rest: &[&'a str]) -> Vec<&'a str> {
        let mut v: Vec<&str> = self.options.iter().map(String::as_str).collect();
        v.extend_from_slice(rest);
        v
    }

    fn update(&self) -> anyhow::Result<()> {
        cmd::run("apt-get", &self.args(&["-q", "update"]))
    }

    /// The image package (and version) that `linux-image-amd64` of a
    /// version starting with `prefix` depends on; the newest such.
    fn image_package(&self, prefix: &str) -> anyhow::Result<(String, String)> {
        let show = cmd::output("apt-cache", &self.args(&["show", "linux-image-amd64"]))
            .context("apt-cache show linux-image-amd64 failed")?;
        let mut best: Option<(String, String, String)> = None;
        for para in show.split("\n\n") {
            let field = |name: &str| {
                para.lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            };
            let (Some(version), Some(depends)) = (field("Version:"), field("Depends:")) else {
                continue;
            };
            if !version.starts_with(prefix) {
                continue;
            }
            // "linux-image-6.1.0-57-amd64 (= 6.1.192-3)"
            let mut parts = depends
                .split([' ', '(', ')', '=', ','])
                .filter(|s| !s.is_empty());
            let (Some(pkg), Some(pkg_version)) = (parts.next(), parts.next()) else {
                continue;
            };
            let newer = best
                .as_ref()
                .is_none_or(|(v, _, _)| version_gt(&version, v));
            if newer {
                best = Some((version.clone(), pkg.to_string(), pkg_version.to_string()));
            }
        }
        let (_, pkg, ver) = best
            .with_context(|| format!("no linux-image-amd64 {prefix}* in {}", SUITES.join(", ")))?;
        Ok((pkg, ver))
    }

    fn download(&self, package: &str, version: &str, into: &Path) -> anyhow::Result<()> {
        let spec = format!("{package}={version}");
        let mut args = self.args(&["-q", "download"]);
        args.push(&spec);
        let status = std::process::Command::new("apt-get")
            .args(&args)
            .current_dir(into)
            .status()
            .context("running apt-get download")?;
        if !status.success() {
            bail!("apt-get download {spec} failed ({status})");
        }
        Ok(())
    }
}

/// Debian's own comparison, through dpkg.
fn version_gt(a: &str, b: &str) -> bool {
    std::process::Command::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
        .is_ok_and(|s| s.success())
}

/// A deb822 source list of [`SUITES`] on the archive the host already uses:
/// the URIs and key of the host's `bookworm` and `bookworm-security` entries.
fn private_sources() -> anyhow::Result<String> {
    const HOST_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";
    let text = std::fs::read_to_string(HOST_SOURCES)
        .with_context(|| format!("reading {HOST_SOURCES} (Debian 12's deb822 source list)"))?;
    let stanzas = host_stanzas(&text);
    let archive = |suite: &str| {
        stanzas
            .iter()
            .find(|s| s.suites.iter().any(|x| x == suite))
            .with_context(|| {
                format!("the host's apt sources have no '{suite}' entry to take the archive's address from")
            })
    };
    let main = archive("bookworm")?;
    let security = archive("bookworm-security")?;
    let mut out = String::new();
    for (stanza, suites) in [
        (main, "bookworm bookworm-backports"),
        (security, "bookworm-security"),
    ] {
        out.push_str(&format!(
            "Types: deb\nURIs: {}\nSuites: {suites}\nComponents: main\n",
            stanza.uris
        ));
        if let Some(key) = &stanza.signed_by {
            out.push_str(&format!("Signed-By: {key}\n"));
        }
        out.push('\n');
    }
    Ok(out)
}

struct Stanza {
    uris: String,
    suites: Vec<String>,
    signed_by: Option<String>,
}

/// The `deb` stanzas of deb822 source files.
fn host_stanzas(text: &str) -> Vec<Stanza> {
    text.split("\n\n")
        .filter_map(|para| {
            let field = |name: &str| {
                para.lines()
                    .filter(|l| !l.starts_with('#'))
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            };
            let types = field("Types:")?;
            if !types.split_whitespace().any(|t| t == "deb") {
                return None;
            }
            Some(Stanza {
                uris: field("URIs:")?,
                suites: field("Suites:")?
                    .split_whitespace()
                    .map(String::from)
                    .collect(),
                signed_by: field("Signed-By:"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_are_chosen_by_name_and_unknown_names_say_what_is_allowed() {
        assert_eq!(select("all").unwrap().len(), MATRIX.len());
        assert!(select("none").unwrap().is_empty());
        let one = select("6.12").unwrap();
        assert_eq!(one[0].name, "6.12");
        let err = select("6.1,5.10").unwrap_err().to_string();
        assert!(err.contains("'5.10'") && err.contains("6.1, 6.12"), "{err}");
    }

    #[test]
    fn the_host_sources_give_the_archive_and_its_key() {
        let text = "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /k.gpg\n\nTypes: deb-src\nURIs: x\nSuites: bookworm\n";
        let s = host_stanzas(text);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].uris, "http://mirror.example/debian");
        assert_eq!(s[0].suites, ["bookworm", "bookworm-updates"]);
        assert_eq!(s[0].signed_by.as_deref(), Some("/k.gpg"));
    }
}
