//! `cargo xtask manifests`: renders the Helm chart with its default values
//! into deploy/kubernetes, so the plain manifests are the chart's defaults
//! (`--check` fails when they are out of date).
//!
//! No Helm binary is available from the registries these machines reach, so
//! this renders the subset of Helm's template language the chart keeps to:
//! `.Values.*`, `.Release.Name`/`.Release.Namespace`, `toJson`, `toYaml`,
//! `quote`, `nindent`, `if`/`else`/`end`, the config checksum, and `{{-`/`-}}`.
//! Anything else is an error, so the chart cannot drift outside it unseen.
use std::{fs, path::Path};

use anyhow::{Context, bail};
use serde_yaml::Value;
use sha2::{Digest, Sha256};

use crate::cmd::root;

const RELEASE: &str = "rampart";
const NAMESPACE: &str = "rampart";
const HEADER: &str = "# Rendered from deploy/helm/rampart with its default values by\n# `cargo xtask manifests`; edit the chart, not this file.\n";

/// Renders the defaults into deploy/kubernetes, and each values file in
/// the chart's `examples/` over the defaults into deploy/kubernetes/examples/<name>.
pub(crate) fn run(check: bool) -> anyhow::Result<()> {
    let chart = root().join("deploy/helm/rampart");
    let values: Value = serde_yaml::from_str(&fs::read_to_string(chart.join("values.yaml"))?)?;
    render_set(
        &chart,
        &values,
        &root().join("deploy/kubernetes"),
        "its default values",
        check,
    )?;
    let mut examples: Vec<_> = fs::read_dir(chart.join("examples"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    examples.sort();
    for ex in examples {
        let name = ex
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let overlay: Value = serde_yaml::from_str(&fs::read_to_string(&ex)?)
            .with_context(|| format!("reading {}", ex.display()))?;
        let mut merged = values.clone();
        merge(&mut merged, overlay);
        let out = root().join("deploy/kubernetes/examples").join(&name);
        render_set(
            &chart,
            &merged,
            &out,
            &format!("examples/{name}.yaml"),
            check,
        )?;
    }
    Ok(())
}

/// Helm's values merge: maps merge key by key, anything else replaces.
fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

fn render_set(
    chart: &Path,
    values: &Value,
    out_dir: &Path,
    from: &str,
    check: bool,
) -> anyhow::Result<()> {
    let header = HEADER.replace("its default values", from);
    let mut names: Vec<String> = fs::read_dir(chart.join("templates"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    let mut files = vec![(
        "namespace.yaml".to_string(),
        format!("{header}apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n"),
    )];
    for n in &names {
        let text = render_file(chart, n, values)?;
        if text.trim().is_empty() {
            continue;
        }
        files.push((n.clone(), format!("{header}{}\n", text.trim())));
    }
    let mut kustomization = format!(
        "{header}apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n"
    );
    for (n, _) in &files {
        kustomization.push_str(&format!("  - {n}\n"));
    }
    files.push(("kustomization.yaml".into(), kustomization));
    let mut stale = Vec::new();
    for (n, text) in &files {
        let path = out_dir.join(n);
        if check {
            if fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                stale.push(n.clone());
            }
        } else {
            fs::create_dir_all(out_dir)?;
            fs::write(&path, text)?;
        }
    }
    if !stale.is_empty() {
        bail!(
            "{} is out of date with the chart ({}); run `cargo xtask manifests`",
            out_dir.strip_prefix(root()).unwrap_or(out_dir).display(),
            stale.join(", ")
        );
    }
    Ok(())
}

fn render_file(chart: &Path, name: &str, values: &Value) -> anyhow::Result<String> {
    let src = fs::read_to_string(chart.join("templates").join(name))?;
    render(&src, values, chart).with_context(|| format!("rendering templates/{name}"))
}

/// Renders one template.
pub(crate) fn render(src: &str, values: &Value, chart: &Path) -> anyhow::Result<String> {
    let mut out = String::new();
    // Output suppressed by false `if`s: one flag per open block.
    let mut blocks: Vec<bool> = Vec::new();
    let mut rest = src;
    while let Some(start) = rest.find("{{") {
        let (before, after) = rest.split_at(start);
        let end = after.find("}}").context("unclosed {{")?;
        let mut action = &after[2..end];
        let mut text = before.to_string();
        if let Some(a) = action.strip_prefix('-') {
            text.truncate(text.trim_end().len());
            action = a;
        }
        let mut trim_after = false;
        if let Some(a) = action.strip_suffix('-') {
            trim_after = true;
            action = a;
        }
        if blocks.iter().all(|b| *b) {
            out.push_str(&text);
        }
        let action = action.trim();
        if let Some(cond) = action.strip_prefix("if ") {
            blocks.push(truthy(&lookup(cond.trim(), values)?));
        } else if action == "else" {
            let open = blocks.last_mut().context("`else` without `if`")?;
            *open = !*open;
        } else if action == "end" {
            blocks.pop().context("`end` without `if`")?;
        } else if blocks.iter().all(|b| *b) {
            out.push_str(&pipeline(action, values, chart)?);
        }
        rest = &after[end + 2..];
        if trim_after {
            rest = rest.trim_start();
        }
    }
    if !blocks.is_empty() {
        bail!("`if` without `end`");
    }
    out.push_str(rest);
    Ok(out)
}

fn pipeline(action: &str, values: &Value, chart: &Path) -> anyhow::Result<String> {
    let mut stages = action.split('|').map(str::trim);
    let first = stages.next().unwrap_or_default();
    let mut s = if first == r#"include (print $.Template.BasePath "/configmap.yaml") ."# {
        render_file(chart, "configmap.yaml", values)?
    } else if let Some(path) = first.strip_prefix("toJson ") {
        serde_json::to_string(&serde_json::to_value(lookup(path.trim(), values)?)?)?
    } else if let Some(path) = first.strip_prefix("toYaml ") {
        serde_yaml::to_string(&lookup(path.trim(), values)?)?
            .trim_end()
            .to_string()
    } else {
        scalar(&lookup(first, values)?)?
    };
    for f in stages {
        s = if f == "quote" {
            serde_json::to_string(&s)?
        } else if f == "sha256sum" {
            Sha256::digest(s.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        } else if let Some(n) = f.strip_prefix("nindent ") {
            let n: usize = n.trim().parse().context("nindent takes a number")?;
            let pad = " ".repeat(n);
            let body: Vec<String> = s
                .trim_end_matches('\n')
                .lines()
                .map(|l| {
                    if l.is_empty() {
                        String::new()
                    } else {
                        format!("{pad}{l}")
                    }
                })
                .collect();
            format!("\n{}", body.join("\n"))
        } else {
            bail!("unsupported template function `{f}`");
        };
    }
    Ok(s)
}

fn lookup(path: &str, values: &Value) -> anyhow::Result<Value> {
    match path {
        ".Release.Name" => return Ok(Value::String(RELEASE.into())),
        ".Release.Namespace" => return Ok(Value::String(NAMESPACE.into())),
        _ => {}
    }
    let rest = path
        .strip_prefix(".Values.")
        .with_context(|| format!("unsupported template term `{path}`"))?;
    let mut v = values;
    for key in rest.split('.') {
        v = v.get(key).with_context(|| format!("no value {path}"))?;
    }
    Ok(v.clone())
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Sequence(s) => !s.is_empty(),
        Value::Mapping(m) => !m.is_empty(),
        Value::Tagged(_) => true,
    }
}

fn scalar(v: &Value) -> anyhow::Result<String> {
    Ok(match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        other => bail!("{other:?} is not a scalar (use toYaml or toJson)"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_else_renders_one_branch() {
        let values: Value = serde_yaml::from_str("set: \"10.0.0.1\"\nunset: \"\"\n").unwrap();
        let src = "{{- if .Values.set }}a={{ .Values.set }}{{- else }}none{{- end }};\
                   {{- if .Values.unset }}b{{- else }}default{{- end }}";
        let out = render(src, &values, Path::new(".")).unwrap();
        assert_eq!(out, "a=10.0.0.1;default");
        assert!(render("{{ else }}", &values, Path::new(".")).is_err());
    }
}
