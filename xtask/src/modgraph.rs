//! The agent's module graph, read from its sources: which top-level module
//! uses which (`use crate::...` and `crate::x::` paths), and the cycles in
//! it. The layers run one way (wire types and config at the bottom, the
//! daemon on top); `cargo xtask test` fails when a cycle comes back.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use anyhow::{Context, bail};

/// Fails, naming each cycle, when the crate under `src` has any.
pub(crate) fn check(src: &Path) -> anyhow::Result<()> {
    let graph = read(src)?;
    let cycles = cycles(&graph);
    if cycles.is_empty() {
        eprintln!(
            "module graph of {}: {} modules, no import cycles",
            src.display(),
            graph.len()
        );
        return Ok(());
    }
    let text: Vec<String> = cycles
        .iter()
        .map(|c| format!("  these import each other in a circle: {}", c.join(", ")))
        .collect();
    bail!(
        "import cycles among the modules of {}:\n{}\nmove what both sides need into a module below them",
        src.display(),
        text.join("\n")
    )
}

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Top-level modules (a file, or a folder with its files) and their uses.
fn read(src: &Path) -> anyhow::Result<Graph> {
    let mut files: BTreeMap<String, Vec<String>> = BTreeMap::new();
    collect(src, src, &mut files)?;
    let names: BTreeSet<String> = files.keys().cloned().collect();
    let mut graph = Graph::new();
    for (module, texts) in &files {
        let uses = graph.entry(module.clone()).or_default();
        for text in texts {
            for used in uses_in(text) {
                if used != *module && names.contains(&used) {
                    uses.insert(used);
                }
            }
        }
    }
    Ok(graph)
}

fn collect(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<String>>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect(root, &path, out)?;
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = path.strip_prefix(root).unwrap_or(&path);
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or_default()
            .trim_end_matches(".rs")
            .to_string();
        // The crate roots declare modules; they are not layers.
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        out.entry(top).or_default().push(text);
    }
    Ok(())
}

/// The crate-level modules a source file uses, outside its unit tests and
/// comments.
fn uses_in(text: &str) -> BTreeSet<String> {
    let code: String = text
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default()
        .lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // `crate::{a::X, b::{self, Y}, c}`: the leading name of each item
            // at depth one.
            let mut depth = 1;
            let mut item = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 || (depth == 1 && ch == ',') {
                    found.extend(leading_name(&item));
                    item.clear();
                    if depth == 0 {
                        break;
                    }
                } else {
                    item.push(ch);
                }
            }
        } else {
            found.extend(leading_name(after));
        }
        rest = after;
    }
    found
}

/// The identifier an item starts with, if any.
fn leading_name(item: &str) -> Option<String> {
    let name: String = item
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// Each strongly connected component of more than one module, its names
/// sorted (Tarjan's algorithm).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct Walk<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g str) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.stack.contains(&w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    component.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn uses_are_read_from_groups_paths_and_not_from_comments_or_tests() {
        let text = "use crate::{\n    api::{IfaceStatus, X},\n    clock,\n    shared::{self, Shared},\n};\nuse crate::prefix::Prefix;\nfn f() { crate::metrics::x(); } // crate::daemon::y\n#[cfg(test)]\nmod tests {\n    use crate::top::Top;\n}\n";
        assert_eq!(
            uses_in(text),
            set(&["api", "clock", "metrics", "prefix", "shared"])
        );
    }

    #[test]
    fn a_cycle_is_found_and_a_layered_graph_has_none() {
        let mut g = Graph::new();
        for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")] {
            g.entry(from.into()).or_default().insert(to.into());
            g.entry(to.into()).or_default();
        }
        assert_eq!(cycles(&g), vec![vec!["a", "b", "c"]]);
        g.get_mut("c").map(|s| s.remove("a"));
        assert!(cycles(&g).is_empty());
    }
}
