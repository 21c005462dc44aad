//! What `compile` found: errors and warnings with node and edge ids.

use std::fmt;

/// How serious a [`Diagnostic`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The flow cannot run.
    Error,
    /// The flow runs, but probably not as its author meant.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One finding of [`Flow::compile`](crate::Flow::compile).
///
/// `code` is a stable kebab-case name tools can match on. The `Display` form reads well
/// in a terminal:
///
/// ```
/// use flowcore::Flow;
/// let flow = Flow::from_json(r#"{"nodes": [{"id": "a", "type": "message"}]}"#).unwrap();
/// let err = flow.compile().unwrap_err();
/// let first = &err.diagnostics()[0];
/// assert_eq!(first.code, "no-start-node");
/// assert_eq!(first.to_string(), "error[no-start-node]: the flow has no start node");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// A stable kebab-case code, such as `"no-start-node"` or `"unreachable-node"`.
    pub code: &'static str,
    /// A sentence for people.
    pub message: String,
    /// The node concerned, if any.
    pub node: Option<String>,
    /// The edge concerned, if any.
    pub edge: Option<String>,
}

impl Diagnostic {
    pub(crate) fn error(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic { severity: Severity::Error, code, message: message.into(), node: None, edge: None }
    }

    pub(crate) fn warning(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic { severity: Severity::Warning, code, message: message.into(), node: None, edge: None }
    }

    pub(crate) fn at_node(mut self, node: &str) -> Diagnostic {
        self.node = Some(node.to_string());
        self
    }

    pub(crate) fn at_edge(mut self, edge: &str) -> Diagnostic {
        self.edge = Some(edge.to_string());
        self
    }

    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.severity, self.code)?;
        if let Some(node) = &self.node {
            write!(f, " node {node:?}")?;
        }
        if let Some(edge) = &self.edge {
            write!(f, " edge {edge:?}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The flow has errors. Holds every diagnostic found, errors and warnings.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct CompileError {
    pub(crate) diagnostics: Vec<Diagnostic>,
}

impl CompileError {
    /// Every diagnostic, errors and warnings, in the order found.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    /// Only the errors.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors().count();
        write!(f, "the flow has {n} error{}", if n == 1 { "" } else { "s" })?;
        for d in self.errors() {
            write!(f, "\n  {d}")?;
        }
        Ok(())
    }
}
