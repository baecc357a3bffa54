//! Rule format v1: the validated model of one rule, built from a positioned YAML tree.
//!
//! This is the "validate" stage: it checks keys, types, names, durations and the shape of
//! feature calls, and collects every error it finds. Expressions stay text here; the
//! [`compile`](crate::compile) stage types them with DataFusion.

use crate::diag::{Diagnostic, did_you_mean};
use crate::yaml::{Node, Pos, Value};
use std::time::Duration;

/// Top-level keys of a rule document.
pub const RULE_KEYS: &[&str] = &[
    "id",
    "version",
    "title",
    "description",
    "severity",
    "tags",
    "enabled",
    "entity",
    "where",
    "window",
    "every",
    "features",
    "condition",
    "suppress",
    "evidence",
    "tests",
    "author",
    "references",
    "falsepositives",
];

/// Most panes a window may have; bounds the memory of one key.
pub const MAX_PANES: u64 = 1440;

/// Longest pane (`every`), in days: event times within a pane are kept as u32 milliseconds.
pub const MAX_EVERY_DAYS: u32 = 30;

/// Alert severity, as in Sigma and OCSF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Informational.
    Info,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

impl Severity {
    /// Every severity name, lowest first.
    pub const NAMES: &'static [&'static str] = &["info", "low", "medium", "high", "critical"];

    /// The name used in rules and alerts.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "info" => Severity::Info,
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => return None,
        })
    }
}

/// An aggregate a feature computes over the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AggKind {
    /// `count()`: events in the window.
    Count,
    /// `count_if(p)`: events for which `p` is true.
    CountIf,
    /// `sum(x)`.
    Sum,
    /// `avg(x)`: mean of the non-null values.
    Avg,
    /// `min(x)`.
    Min,
    /// `max(x)`.
    Max,
    /// `stddev(x)`: population standard deviation.
    Stddev,
    /// `distinct(x)`: number of distinct non-null values (exact when small, HyperLogLog beyond).
    Distinct,
    /// `quantile(x, q)`: the q-quantile (exact when small, KLL beyond).
    Quantile,
    /// `top_share(x)`: share of events carrying the most frequent value.
    TopShare,
    /// `entropy(x)`: normalized Shannon entropy of the values (0 = one value, 1 = uniform).
    Entropy,
    /// `interarrival_cv()`: coefficient of variation of the gaps between events.
    InterarrivalCv,
}

impl AggKind {
    /// Names of every aggregate.
    pub const NAMES: &'static [&'static str] = &[
        "count",
        "count_if",
        "sum",
        "avg",
        "min",
        "max",
        "stddev",
        "distinct",
        "quantile",
        "top_share",
        "entropy",
        "interarrival_cv",
    ];

    /// The name used in rules.
    pub fn as_str(self) -> &'static str {
        match self {
            AggKind::Count => "count",
            AggKind::CountIf => "count_if",
            AggKind::Sum => "sum",
            AggKind::Avg => "avg",
            AggKind::Min => "min",
            AggKind::Max => "max",
            AggKind::Stddev => "stddev",
            AggKind::Distinct => "distinct",
            AggKind::Quantile => "quantile",
            AggKind::TopShare => "top_share",
            AggKind::Entropy => "entropy",
            AggKind::InterarrivalCv => "interarrival_cv",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "count" => AggKind::Count,
            "count_if" => AggKind::CountIf,
            "sum" => AggKind::Sum,
            "avg" => AggKind::Avg,
            "min" => AggKind::Min,
            "max" => AggKind::Max,
            "stddev" => AggKind::Stddev,
            "distinct" => AggKind::Distinct,
            "quantile" => AggKind::Quantile,
            "top_share" => AggKind::TopShare,
            "entropy" => AggKind::Entropy,
            "interarrival_cv" => AggKind::InterarrivalCv,
            _ => return None,
        })
    }

    /// Relative cost of reading the aggregate from a window of several panes: a count or
    /// moments add up numbers, extrema and arrivals fold small records, distinct sets and
    /// sketches merge sets. The engine checks a rule's bounds cheapest first
    /// ([`crate::CompiledRule::bounds`]).
    pub fn read_cost(self) -> u8 {
        match self {
            AggKind::Count | AggKind::CountIf => 0,
            AggKind::Sum | AggKind::Avg | AggKind::Stddev => 1,
            AggKind::Min | AggKind::Max | AggKind::InterarrivalCv => 2,
            AggKind::Distinct | AggKind::Quantile | AggKind::TopShare | AggKind::Entropy => 3,
        }
    }

    /// How many arguments the aggregate takes.
    pub fn arity(self) -> usize {
        match self {
            AggKind::Count | AggKind::InterarrivalCv => 0,
            AggKind::Quantile => 2,
            _ => 1,
        }
    }
}

/// An expression's text and where it starts in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprSrc {
    /// SQL text.
    pub text: String,
    /// Position of the text's first character.
    pub pos: Pos,
    /// For block scalars (`|`, `>`): where each source line of the text starts, as (byte offset
    /// in `text`, position in the file). Empty for one-line scalars.
    pub lines: Vec<(usize, Pos)>,
}

impl ExprSrc {
    /// A one-line expression at `pos`.
    pub fn new(text: impl Into<String>, pos: Pos) -> Self {
        Self {
            text: text.into(),
            pos,
            lines: Vec::new(),
        }
    }

    /// The file position of byte `off` of the text.
    pub fn pos_at(&self, off: usize) -> Pos {
        match self.lines.iter().rev().find(|(start, _)| *start <= off) {
            Some((start, pos)) => {
                let end = off.min(self.text.len());
                let chars = self.text.get(*start..end).map_or(0, |s| s.chars().count()) as u32;
                Pos {
                    line: pos.line,
                    col: pos.col + chars,
                }
            }
            None => offset_pos(self.pos, &self.text, off),
        }
    }
}

/// Whether `line` ends with a block scalar indicator (`key: |`, `key: >-`, `- |2`, ...).
fn ends_with_block_indicator(line: &str) -> bool {
    let last = line.split_whitespace().last().unwrap_or("");
    let mut chars = last.chars();
    matches!(chars.next(), Some('|' | '>')) && chars.all(|c| matches!(c, '-' | '+' | '0'..='9'))
}

/// If the scalar at `pos` is a block scalar: where each of its content lines starts, as (byte
/// offset in the scalar's text, file position). The parser may place a block scalar either at
/// its indicator or at its first content line; both are handled.
fn block_lines(source: &str, pos: Pos) -> Option<Vec<(usize, Pos)>> {
    let line_at = |n: u32| source.lines().nth(n.checked_sub(1)? as usize);
    let here = line_at(pos.line)?;
    let first_content = if matches!(
        here.chars().nth(pos.col.saturating_sub(1) as usize),
        Some('|' | '>')
    ) {
        pos.line + 1
    } else if line_at(pos.line.checked_sub(1)?).is_some_and(ends_with_block_indicator)
        && here.chars().take_while(|c| *c == ' ').count() + 1 == pos.col as usize
    {
        pos.line
    } else {
        return None;
    };
    let mut out = Vec::new();
    let mut offset = 0;
    let mut indent = None;
    for (i, line) in source.lines().enumerate().skip(first_content as usize - 1) {
        if line.trim().is_empty() {
            offset += 1;
            continue;
        }
        let lead = line.chars().take_while(|c| *c == ' ').count();
        let block_indent = *indent.get_or_insert(lead);
        if lead < block_indent {
            break;
        }
        out.push((
            offset,
            Pos {
                line: i as u32 + 1,
                col: block_indent as u32 + 1,
            },
        ));
        offset += line.len() - block_indent + 1;
    }
    Some(out)
}

/// One named feature: an aggregate over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct Feature {
    /// The name used in `condition` and alerts.
    pub name: String,
    /// The aggregate.
    pub agg: AggKind,
    /// Its argument, if it takes one.
    pub arg: Option<ExprSrc>,
    /// The constant parameter: `q` of `quantile(x, q)`.
    pub param: Option<f64>,
    /// The feature's text as written, e.g. `count_if(status >= 400)`.
    pub text: String,
    /// Where the feature is written.
    pub pos: Pos,
}

/// What a rule test expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestExpect {
    /// Number of `new` alerts.
    pub alerts: u64,
    /// The entity every alert must be for, when given.
    pub entity: Option<String>,
}

/// A fixture-driven test of a rule (`tests:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleTest {
    /// Name of the case.
    pub name: String,
    /// Path of the JSONL input, relative to the rule file.
    pub input: String,
    /// The expected outcome.
    pub expect: TestExpect,
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Stable, unique id.
    pub id: String,
    /// Bumped on any change of meaning.
    pub version: u32,
    /// One line for humans.
    pub title: String,
    /// What it detects and what an analyst should do.
    pub description: String,
    /// Severity.
    pub severity: Severity,
    /// Tags, e.g. `atlas.AML.T0024.002`.
    pub tags: Vec<String>,
    /// Disabled rules are validated but not run.
    pub enabled: bool,
    /// Group-by expression.
    pub entity: ExprSrc,
    /// Per-event filter.
    pub filter: Option<ExprSrc>,
    /// Window length.
    pub window: Duration,
    /// Pane (slide) length.
    pub every: Duration,
    /// Features, in source order.
    pub features: Vec<Feature>,
    /// Boolean expression over the features.
    pub condition: ExprSrc,
    /// One new alert per entity per this period.
    pub suppress: Duration,
    /// Features reported in the alert.
    pub evidence: Vec<String>,
    /// Fixture tests.
    pub tests: Vec<RuleTest>,
    /// The file the rule came from.
    pub file: String,
    /// Where the rule's document starts.
    pub pos: Pos,
}

impl Rule {
    /// Number of panes in the window.
    pub fn panes(&self) -> u64 {
        (self.window.as_millis() / self.every.as_millis().max(1)) as u64
    }
}

/// Collects diagnostics for one document.
struct Ctx<'a> {
    file: &'a str,
    source: &'a str,
    rule_id: Option<String>,
    diags: Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn err(&mut self, pos: Pos, message: impl Into<String>, hint: Option<String>) {
        self.diags.push(Diagnostic {
            file: self.file.to_owned(),
            pos,
            rule_id: self.rule_id.clone(),
            message: message.into(),
            hint,
        });
    }

    fn string(&mut self, key: &str, node: &Node) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            other => {
                self.err(
                    node.pos,
                    format!("`{key}` must be a string, found {}", other.kind()),
                    None,
                );
                None
            }
        }
    }

    /// An expression: a string, or a bare number/bool the author meant as SQL.
    fn expr(&mut self, key: &str, node: &Node) -> Option<ExprSrc> {
        let text = match &node.value {
            Value::Str(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            other => {
                self.err(
                    node.pos,
                    format!(
                        "`{key}` must be an SQL expression (a string), found {}",
                        other.kind()
                    ),
                    None,
                );
                return None;
            }
        };
        if text.trim().is_empty() {
            self.err(node.pos, format!("`{key}` is empty"), None);
            return None;
        }
        match block_lines(self.source, node.pos) {
            Some(lines) => {
                let pos = lines.first().map_or(node.pos, |(_, p)| *p);
                Some(ExprSrc { pos, text, lines })
            }
            None => Some(ExprSrc::new(text, text_start(self.source, node.pos))),
        }
    }

    fn duration(&mut self, key: &str, node: &Node) -> Option<Duration> {
        let s = self.string(key, node)?;
        match humantime::parse_duration(s.trim()) {
            Ok(d) if d.as_millis() == 0 => {
                self.err(node.pos, format!("`{key}` must be longer than zero"), None);
                None
            }
            Ok(d) if d.subsec_nanos() != 0 => {
                self.err(
                    node.pos,
                    format!("`{key}` must be whole seconds, got `{s}`"),
                    None,
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.err(
                    node.pos,
                    format!(
                        "`{key}`: `{s}` is not a duration ({e}); write e.g. `30s`, `5m`, `1h`, `7d`"
                    ),
                    None,
                );
                None
            }
        }
    }

    fn string_list(&mut self, key: &str, node: &Node) -> Option<Vec<String>> {
        let Value::Seq(items) = &node.value else {
            self.err(
                node.pos,
                format!(
                    "`{key}` must be a list of strings, found {}",
                    node.value.kind()
                ),
                None,
            );
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            out.push(self.string(key, item)?);
        }
        Some(out)
    }
}

/// Where the text of a scalar starts: after the opening quote of a quoted scalar, on the next
/// line for a block scalar (`|`, `>`).
fn text_start(source: &str, pos: Pos) -> Pos {
    let Some(line) = source.lines().nth(pos.line.saturating_sub(1) as usize) else {
        return pos;
    };
    match line.chars().nth(pos.col.saturating_sub(1) as usize) {
        Some('"' | '\'') => Pos {
            line: pos.line,
            col: pos.col + 1,
        },
        Some('|' | '>') => {
            let next = source.lines().nth(pos.line as usize).unwrap_or("");
            let indent = next.chars().take_while(|c| *c == ' ').count() as u32;
            Pos {
                line: pos.line + 1,
                col: indent + 1,
            }
        }
        _ => pos,
    }
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn is_rule_id(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A call split by [`split_call`]: the name and each argument with its byte offset.
pub type Call<'a> = (&'a str, Vec<(usize, &'a str)>);

/// Splits `name(a, b)` into the name and its top-level arguments, with each argument's byte
/// offset in `text`. Commas inside parentheses, brackets or quotes do not split.
pub fn split_call(text: &str) -> Result<Call<'_>, String> {
    let open = text.find('(').ok_or_else(|| {
        format!(
            "`{}` is not an aggregate call; write e.g. `count()` or `sum(output_tokens)`",
            text.trim()
        )
    })?;
    let trimmed_end = text.trim_end();
    if !trimmed_end.ends_with(')') {
        return Err(format!("`{}` must end with `)`", text.trim()));
    }
    let name = text[..open].trim();
    let inner_start = open + 1;
    let inner_end = trimmed_end.len() - 1;
    if inner_end < inner_start {
        return Err(format!("`{}` has unbalanced parentheses", text.trim()));
    }
    let inner = &text[inner_start..inner_end];
    let mut args = Vec::new();
    let (mut depth, mut quote, mut start) = (0i32, None::<char>, 0usize);
    for (i, c) in inner.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(' | '[') => depth += 1,
            (None, ')' | ']') => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("`{}` has unbalanced parentheses", text.trim()));
                }
            }
            (None, ',') if depth == 0 => {
                args.push((inner_start + start, &inner[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 || quote.is_some() {
        return Err(format!(
            "`{}` has unbalanced parentheses or quotes",
            text.trim()
        ));
    }
    if !inner[start..].trim().is_empty() || !args.is_empty() {
        args.push((inner_start + start, &inner[start..]));
    }
    // Report each argument at its first non-blank character.
    let args = args
        .into_iter()
        .map(|(off, a)| {
            let lead = a.len() - a.trim_start().len();
            (off + lead, a.trim())
        })
        .collect();
    Ok((name, args))
}

/// The expressions of a rule that failed validation, for the compiler to check anyway
/// ([`crate::Compiler::check`]): each is `None` where it did not validate itself.
#[derive(Debug, Clone, Default)]
pub struct ExprCheck {
    /// The file.
    pub file: String,
    /// The rule's id, when it has one.
    pub rule_id: Option<String>,
    /// `entity`.
    pub entity: Option<ExprSrc>,
    /// `where`.
    pub filter: Option<ExprSrc>,
    /// The features that validated.
    pub features: Vec<Feature>,
    /// Every declared feature name (the condition may refer to any of them).
    pub feature_names: Vec<String>,
    /// `condition`.
    pub condition: Option<ExprSrc>,
}

/// Validates one YAML document as a rule. Returns the rule when the document has no errors,
/// and pushes every error found onto `diags`.
pub fn validate_document(
    file: &str,
    source: &str,
    doc: &Node,
    diags: &mut Vec<Diagnostic>,
) -> Option<Rule> {
    validate_document_or_exprs(file, source, doc, diags).ok()
}

/// [`validate_document`], returning on failure what of the rule's expressions validated.
pub fn validate_document_or_exprs(
    file: &str,
    source: &str,
    doc: &Node,
    diags: &mut Vec<Diagnostic>,
) -> Result<Rule, Box<ExprCheck>> {
    let mut cx = Ctx {
        file,
        source,
        rule_id: None,
        diags: Vec::new(),
    };
    let Value::Map(entries) = &doc.value else {
        cx.err(
            doc.pos,
            format!(
                "a rule must be a mapping of keys, found {}",
                doc.value.kind()
            ),
            None,
        );
        diags.append(&mut cx.diags);
        return Err(Box::default());
    };
    // Find the id first so that every later error names its rule.
    for (k, v) in entries {
        if k.as_str() == Some("id")
            && let Some(id) = v.as_str()
        {
            cx.rule_id = Some(id.to_owned());
        }
    }
    let mut seen: Vec<(&str, Pos)> = Vec::new();
    let get = |name: &str| {
        entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(name))
            .map(|(_, v)| v)
    };
    for (k, _) in entries {
        let Some(key) = k.as_str() else {
            cx.err(
                k.pos,
                format!("rule keys must be strings, found {}", k.value.kind()),
                None,
            );
            continue;
        };
        if let Some((_, first)) = seen.iter().find(|(s, _)| *s == key) {
            let first = *first;
            cx.err(
                k.pos,
                format!("duplicate key `{key}` (first at line {})", first.line),
                None,
            );
        }
        seen.push((key, k.pos));
        if !RULE_KEYS.contains(&key) {
            cx.err(
                k.pos,
                format!("unknown key `{key}`"),
                did_you_mean(key, RULE_KEYS.iter().copied()),
            );
        }
    }

    let missing = |cx: &mut Ctx<'_>, key: &str| {
        cx.err(doc.pos, format!("missing required key `{key}`"), None)
    };

    let id = match get("id") {
        Some(n) => cx.string("id", n).and_then(|id| {
            if is_rule_id(&id) {
                Some(id)
            } else {
                cx.err(
                    n.pos,
                    format!("`id` `{id}` may hold only letters, digits, `.`, `_` and `-`"),
                    None,
                );
                None
            }
        }),
        None => {
            missing(&mut cx, "id");
            None
        }
    };
    let version = match get("version") {
        Some(n) => match n.value {
            Value::Int(v) if v >= 1 && v <= i64::from(u32::MAX) => Some(v as u32),
            _ => {
                cx.err(
                    n.pos,
                    format!(
                        "`version` must be a positive integer, found {}",
                        n.value.kind()
                    ),
                    None,
                );
                None
            }
        },
        None => {
            missing(&mut cx, "version");
            None
        }
    };
    let title = match get("title") {
        Some(n) => cx.string("title", n),
        None => {
            missing(&mut cx, "title");
            None
        }
    };
    let description =
        get("description").map_or(Some(String::new()), |n| cx.string("description", n));
    let severity = match get("severity") {
        Some(n) => cx.string("severity", n).and_then(|s| {
            let found = Severity::parse(&s);
            if found.is_none() {
                cx.err(
                    n.pos,
                    format!(
                        "unknown severity `{s}`; use one of {}",
                        Severity::NAMES.join(", ")
                    ),
                    did_you_mean(&s, Severity::NAMES.iter().copied()),
                );
            }
            found
        }),
        None => {
            missing(&mut cx, "severity");
            None
        }
    };
    let tags = get("tags").map_or(Some(Vec::new()), |n| cx.string_list("tags", n));
    for key in ["references", "falsepositives"] {
        if let Some(n) = get(key) {
            cx.string_list(key, n);
        }
    }
    if let Some(n) = get("author") {
        cx.string("author", n);
    }
    let enabled = match get("enabled") {
        Some(n) => match n.value {
            Value::Bool(b) => Some(b),
            _ => {
                cx.err(
                    n.pos,
                    format!("`enabled` must be true or false, found {}", n.value.kind()),
                    None,
                );
                None
            }
        },
        None => Some(true),
    };
    let entity = match get("entity") {
        Some(n) => cx.expr("entity", n),
        None => {
            missing(&mut cx, "entity");
            None
        }
    };
    let filter = get("where").map(|n| cx.expr("where", n));
    let window = match get("window") {
        Some(n) => cx.duration("window", n),
        None => {
            missing(&mut cx, "window");
            None
        }
    };
    let every = match get("every") {
        Some(n) => cx.duration("every", n),
        None => {
            missing(&mut cx, "every");
            None
        }
    };
    if let (Some(w), Some(e), Some(n)) = (window, every, get("every")) {
        let (w, e) = (w.as_millis(), e.as_millis());
        if e > u128::from(MAX_EVERY_DAYS) * 86_400_000 {
            cx.err(
                n.pos,
                format!("`every` may be at most {MAX_EVERY_DAYS}d"),
                None,
            );
        } else if e > w || w % e != 0 {
            cx.err(
                n.pos,
                "`every` must divide `window` evenly (e.g. window 1h, every 5m)",
                None,
            );
        } else if (w / e) as u64 > MAX_PANES {
            cx.err(
                n.pos,
                format!(
                    "`window` / `every` is {} panes; at most {MAX_PANES} are allowed",
                    w / e
                ),
                None,
            );
        }
    }
    let suppress = match get("suppress") {
        Some(n) => cx.duration("suppress", n),
        None => window,
    };

    let checked = match get("features") {
        Some(n) => validate_features(&mut cx, n),
        None => {
            missing(&mut cx, "features");
            None
        }
    };
    let features_ok = checked.as_ref().is_some_and(|(_, _, ok)| *ok);
    let (features, declared, _) = checked.unwrap_or_default();
    // Names can only be checked against features that validated.
    let feature_names: Vec<String> = if features_ok {
        features.iter().map(|f| f.name.clone()).collect()
    } else {
        Vec::new()
    };
    let condition = match get("condition") {
        Some(n) => cx.expr("condition", n),
        None => {
            missing(&mut cx, "condition");
            None
        }
    };
    let evidence = match get("evidence") {
        Some(n) => cx.string_list("evidence", n).inspect(|names| {
            if let (Value::Seq(items), true) = (&n.value, features_ok) {
                for (name, item) in names.iter().zip(items) {
                    if !feature_names.contains(name) {
                        cx.err(
                            item.pos,
                            format!(
                                "`evidence` names `{name}`, which is not a feature of this rule"
                            ),
                            did_you_mean(name, feature_names.iter().map(String::as_str)),
                        );
                    }
                }
            }
        }),
        None => Some(feature_names.clone()),
    };
    let tests = get("tests").map_or(Some(Vec::new()), |n| validate_tests(&mut cx, n));

    let ok = cx.diags.is_empty();
    diags.append(&mut cx.diags);
    if !ok {
        // The rule does not load, but its expressions that did validate are still compiled,
        // so that their errors show in the same pass as the others.
        return Err(Box::new(ExprCheck {
            file: file.to_owned(),
            rule_id: cx.rule_id.clone(),
            entity,
            filter: filter.flatten(),
            features,
            feature_names: declared,
            condition,
        }));
    }
    let rule = (|| {
        Some(Rule {
            id: id?,
            version: version?,
            title: title?,
            description: description?,
            severity: severity?,
            tags: tags?,
            enabled: enabled?,
            entity: entity?,
            filter: filter.flatten(),
            window: window?,
            every: every?,
            features,
            condition: condition?,
            suppress: suppress?,
            evidence: evidence?,
            tests: tests?,
            file: file.to_owned(),
            pos: doc.pos,
        })
    })();
    // Every part is present when nothing was reported.
    rule.ok_or_else(Box::default)
}

/// The features that validated, every declared name, and whether all validated (`None` when
/// `features` is not a non-empty mapping).
fn validate_features(cx: &mut Ctx<'_>, node: &Node) -> Option<(Vec<Feature>, Vec<String>, bool)> {
    let Value::Map(entries) = &node.value else {
        cx.err(
            node.pos,
            format!(
                "`features` must be a mapping of name: aggregate, found {}",
                node.value.kind()
            ),
            None,
        );
        return None;
    };
    if entries.is_empty() {
        cx.err(
            node.pos,
            "`features` is empty; a rule needs at least one feature",
            None,
        );
        return None;
    }
    let before = cx.diags.len();
    let mut out = Vec::new();
    let mut names = Vec::new();
    for (k, v) in entries {
        let Some(name) = k.as_str() else {
            cx.err(k.pos, "feature names must be strings", None);
            continue;
        };
        names.push(name.to_owned());
        if !is_ident(name) {
            cx.err(
                k.pos,
                format!("feature name `{name}` must be lower_snake_case (letters, digits, `_`)"),
                None,
            );
            continue;
        }
        if out.iter().any(|f: &Feature| f.name == name) {
            cx.err(k.pos, format!("duplicate feature `{name}`"), None);
            continue;
        }
        let Some(text) = cx.string(&format!("features.{name}"), v) else {
            continue;
        };
        let start = text_start(cx.source, v.pos);
        let (agg_name, args) = match split_call(&text) {
            Ok(x) => x,
            Err(e) => {
                cx.err(start, format!("feature `{name}`: {e}"), None);
                continue;
            }
        };
        let Some(agg) = AggKind::parse(agg_name) else {
            cx.err(
                start,
                format!("feature `{name}`: unknown aggregate `{agg_name}`"),
                did_you_mean(agg_name, AggKind::NAMES.iter().copied()),
            );
            continue;
        };
        if args.len() != agg.arity() {
            cx.err(
                start,
                format!(
                    "feature `{name}`: `{agg_name}` takes {} argument(s), found {}",
                    agg.arity(),
                    args.len()
                ),
                None,
            );
            continue;
        }
        let arg = args
            .first()
            .map(|(off, a)| ExprSrc::new(*a, offset_pos(start, &text, *off)));
        let param = match (agg, args.get(1)) {
            (AggKind::Quantile, Some((off, q))) => match q.parse::<f64>() {
                Ok(q) if (0.0..=1.0).contains(&q) => Some(q),
                _ => {
                    cx.err(
                        offset_pos(start, &text, *off),
                        format!("feature `{name}`: the quantile must be a number from 0 to 1, e.g. 0.99; found `{q}`"),
                        None,
                    );
                    continue;
                }
            },
            _ => None,
        };
        out.push(Feature {
            name: name.to_owned(),
            agg,
            arg,
            param,
            text: text.trim().to_owned(),
            pos: k.pos,
        });
    }
    let ok = cx.diags.len() == before;
    Some((out, names, ok))
}

/// The position of byte `off` of `text`, where `text` starts at `start` (newlines move lines).
pub fn offset_pos(start: Pos, text: &str, off: usize) -> Pos {
    let before = &text[..off.min(text.len())];
    match before.rfind('\n') {
        None => Pos {
            line: start.line,
            col: start.col + before.chars().count() as u32,
        },
        Some(nl) => Pos {
            line: start.line + before.matches('\n').count() as u32,
            col: start.col + before[nl + 1..].chars().count() as u32,
        },
    }
}

fn validate_tests(cx: &mut Ctx<'_>, node: &Node) -> Option<Vec<RuleTest>> {
    const TEST_KEYS: &[&str] = &["name", "input", "expect"];
    const EXPECT_KEYS: &[&str] = &["alerts", "entity"];
    let Value::Seq(items) = &node.value else {
        cx.err(
            node.pos,
            format!("`tests` must be a list, found {}", node.value.kind()),
            None,
        );
        return None;
    };
    let before = cx.diags.len();
    let mut out = Vec::new();
    for item in items {
        let Value::Map(entries) = &item.value else {
            cx.err(
                item.pos,
                "each test must be a mapping with `name`, `input` and `expect`",
                None,
            );
            continue;
        };
        let (mut name, mut input, mut expect) = (None, None, None);
        for (k, v) in entries {
            match k.as_str() {
                Some("name") => name = cx.string("name", v),
                Some("input") => input = cx.string("input", v),
                Some("expect") => {
                    let Value::Map(e) = &v.value else {
                        cx.err(
                            v.pos,
                            "`expect` must be a mapping, e.g. {alerts: 1, entity: acct-7}",
                            None,
                        );
                        continue;
                    };
                    let (mut alerts, mut entity) = (None, None);
                    for (ek, ev) in e {
                        match (ek.as_str(), &ev.value) {
                            (Some("alerts"), Value::Int(n)) if *n >= 0 => alerts = Some(*n as u64),
                            (Some("alerts"), _) => {
                                cx.err(ev.pos, "`expect.alerts` must be a count (0 or more)", None)
                            }
                            (Some("entity"), _) => entity = cx.string("expect.entity", ev),
                            (Some(other), _) => cx.err(
                                ek.pos,
                                format!("unknown key `expect.{other}`"),
                                did_you_mean(other, EXPECT_KEYS.iter().copied()),
                            ),
                            (None, _) => cx.err(ek.pos, "keys must be strings", None),
                        }
                    }
                    match alerts {
                        Some(alerts) => expect = Some(TestExpect { alerts, entity }),
                        None => cx.err(v.pos, "`expect` needs `alerts`", None),
                    }
                }
                Some(other) => cx.err(
                    k.pos,
                    format!("unknown key `tests.{other}`"),
                    did_you_mean(other, TEST_KEYS.iter().copied()),
                ),
                None => cx.err(k.pos, "keys must be strings", None),
            }
        }
        match (name, input, expect) {
            (Some(name), Some(input), Some(expect)) => out.push(RuleTest {
                name,
                input,
                expect,
            }),
            _ => cx.err(item.pos, "a test needs `name`, `input` and `expect`", None),
        }
    }
    (cx.diags.len() == before).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_call_handles_nesting_and_quotes() {
        let (name, args) = split_call("count_if(array_has(labels, 'a,b'))").expect("ok");
        assert_eq!(name, "count_if");
        assert_eq!(args, vec![(9, "array_has(labels, 'a,b')")]);
        let (name, args) = split_call("count()").expect("ok");
        assert_eq!((name, args.len()), ("count", 0));
        let (_, args) = split_call("quantile(latency_ms, 0.99)").expect("ok");
        assert_eq!(args, vec![(9, "latency_ms"), (21, "0.99")]);
        assert!(split_call("sum(x").is_err());
        assert!(split_call("sum(x))").is_err());
        assert!(split_call("requests").is_err());
    }

    #[test]
    fn offsets_follow_lines() {
        let p = offset_pos(Pos { line: 3, col: 5 }, "ab\ncde", 4);
        assert_eq!(p, Pos { line: 4, col: 6 });
    }
}
