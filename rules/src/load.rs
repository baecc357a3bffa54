//! Loading a rule set from files and directories: parse, validate, compile, all-or-nothing.

use crate::compile::{CompiledRule, Compiler};
use crate::diag::{Diagnostic, RuleSetError};
use crate::rule::{ExprCheck, Rule, validate_document_or_exprs};
use crate::yaml::{Pos, parse_documents};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A loaded rule set. Only enabled rules run; disabled ones were still validated.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    /// Enabled rules, in load order (files sorted by path, documents in file order).
    pub rules: Vec<Arc<CompiledRule>>,
    /// Ids of rules that validated but are disabled.
    pub disabled: Vec<String>,
}

impl RuleSet {
    /// Number of enabled rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether no rule is enabled.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// Every `*.yaml` / `*.yml` file under `paths` (a path may be a file or a directory, searched
/// recursively), sorted. An unreadable path is a diagnostic.
pub fn rule_files(paths: &[PathBuf], diags: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>, diags: &mut Vec<Diagnostic>) {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                diags.push(io_diag(dir, &e));
                return;
            }
        };
        let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for p in entries {
            // Hidden entries are skipped: Kubernetes mounts a ConfigMap as symlinks into
            // `..data` and `..<timestamp>` folders, which would load every rule twice.
            if p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
            {
                continue;
            }
            if p.is_dir() {
                walk(&p, out, diags);
            } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out, diags);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            diags.push(Diagnostic {
                file: p.display().to_string(),
                pos: Pos::default(),
                rule_id: None,
                message: "no such file or directory".into(),
                hint: None,
            });
        }
    }
    out
}

fn io_diag(path: &Path, e: &std::io::Error) -> Diagnostic {
    Diagnostic {
        file: path.display().to_string(),
        pos: Pos::default(),
        rule_id: None,
        message: format!("cannot read: {e}"),
        hint: None,
    }
}

/// Parses and validates one file's text, appending its rules and diagnostics, and the
/// expressions of the rules that failed, for [`Compiler::check`].
pub fn validate_source(
    file: &str,
    text: &str,
    rules: &mut Vec<Rule>,
    failed: &mut Vec<ExprCheck>,
    diags: &mut Vec<Diagnostic>,
) {
    match parse_documents(text) {
        Ok(docs) => {
            for doc in &docs {
                match validate_document_or_exprs(file, text, doc, diags) {
                    Ok(rule) => rules.push(rule),
                    Err(exprs) => failed.push(*exprs),
                }
            }
        }
        Err(e) => diags.push(Diagnostic {
            file: file.to_owned(),
            pos: e.pos,
            rule_id: None,
            message: format!("invalid YAML: {}", e.message),
            hint: None,
        }),
    }
}

/// Loads rules from in-memory sources `(file name, text)`.
pub fn load_sources(sources: &[(String, String)]) -> Result<RuleSet, RuleSetError> {
    let mut diags = Vec::new();
    let mut rules = Vec::new();
    let mut failed = Vec::new();
    for (file, text) in sources {
        validate_source(file, text, &mut rules, &mut failed, &mut diags);
    }
    finish(rules, failed, diags)
}

/// Loads rules from files and directories.
pub fn load_paths(paths: &[PathBuf]) -> Result<RuleSet, RuleSetError> {
    let mut diags = Vec::new();
    let mut rules = Vec::new();
    let mut failed = Vec::new();
    for file in rule_files(paths, &mut diags) {
        match std::fs::read_to_string(&file) {
            Ok(text) => validate_source(
                &file.display().to_string(),
                &text,
                &mut rules,
                &mut failed,
                &mut diags,
            ),
            Err(e) => diags.push(io_diag(&file, &e)),
        }
    }
    finish(rules, failed, diags)
}

fn finish(
    rules: Vec<Rule>,
    failed: Vec<ExprCheck>,
    mut diags: Vec<Diagnostic>,
) -> Result<RuleSet, RuleSetError> {
    // Ids are unique across the whole set.
    for (i, r) in rules.iter().enumerate() {
        if let Some(first) = rules[..i].iter().find(|o| o.id == r.id) {
            diags.push(Diagnostic {
                file: r.file.clone(),
                pos: r.pos,
                rule_id: Some(r.id.clone()),
                message: format!(
                    "duplicate rule id (also defined at {}:{})",
                    first.file, first.pos
                ),
                hint: None,
            });
        }
    }
    let compiler = Compiler::new();
    for exprs in &failed {
        compiler.check(exprs, &mut diags);
    }
    let mut set = RuleSet::default();
    for rule in rules {
        let enabled = rule.enabled;
        let id = rule.id.clone();
        if let Some(c) = compiler.compile(rule, &mut diags) {
            if enabled {
                set.rules.push(Arc::new(c));
            } else {
                set.disabled.push(id);
            }
        }
    }
    if set.rules.is_empty() && set.disabled.is_empty() && diags.is_empty() {
        diags.push(Diagnostic {
            file: "<rules>".into(),
            pos: Pos::default(),
            rule_id: None,
            message: "no rules found (rule files end in .yaml or .yml)".into(),
            hint: None,
        });
    }
    if diags.is_empty() {
        Ok(set)
    } else {
        diags.sort_by(|a, b| (&a.file, a.pos).cmp(&(&b.file, b.pos)));
        Err(RuleSetError(diags))
    }
}
