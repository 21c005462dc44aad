//! `flowctl graph`: the flow as a Mermaid or Graphviz diagram, untested nodes and edges
//! dashed when a coverage file from `flowctl test --coverage-json` is given.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;

use flowcore::{FlowGraph, GraphLink};
use flowcore_examples::transcript::{CoverageReport, Edge};

use crate::load::compile_flow;
use crate::{Failure, GraphFormat};

/// Prints the diagram of a flow that compiles.
pub(crate) fn run(path: &Path, format: GraphFormat, coverage: Option<&Path>) -> Result<u8, Failure> {
    let flow = compile_flow(path)?;
    let graph = flow.graph();
    let untested = match coverage {
        Some(coverage) => read_untested(coverage, flow.id())?,
        None => Untested::default(),
    };
    let text = match format {
        GraphFormat::Mermaid => mermaid(&graph, &untested),
        GraphFormat::Dot => dot(&graph, &untested),
    };
    print!("{text}");
    Ok(0)
}

/// The nodes and edges a coverage report lists as untested.
#[derive(Debug, Default)]
pub(crate) struct Untested {
    nodes: HashSet<String>,
    edges: Vec<Edge>,
}

impl Untested {
    fn node(&self, id: &flowcore::NodeId) -> bool {
        self.nodes.contains(id.as_str())
    }

    fn link(&self, link: &GraphLink) -> bool {
        self.edges.iter().any(|e| e.from == link.from.as_str() && e.to == link.to.as_str() && e.label == link.label)
    }
}

fn read_untested(path: &Path, flow_id: &str) -> Result<Untested, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| Failure::unreadable(format!("cannot read {}: {err}", path.display())))?;
    let report: CoverageReport = serde_json::from_str(&text)
        .map_err(|err| Failure::unreadable(format!("{} is not a coverage report: {err}", path.display())))?;
    if report.flow != flow_id {
        return Err(Failure::unreadable(format!(
            "{} is the coverage of flow {:?}, not {flow_id:?}",
            path.display(),
            report.flow
        )));
    }
    Ok(Untested { nodes: report.nodes.untested.into_iter().collect(), edges: report.edges.untested })
}

/// A node's label: its id, its type and a short excerpt of what it says.
fn label(id: &str, kind: &str, text: Option<&str>) -> String {
    match text.map(|t| excerpt(t, 40)) {
        Some(text) if !text.is_empty() => format!("{id} ({kind})\n{text}"),
        _ => format!("{id} ({kind})"),
    }
}

fn excerpt(text: &str, max_chars: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max_chars {
        return flat;
    }
    let mut cut: String = flat.chars().take(max_chars - 1).collect();
    cut.push('…');
    cut
}

/// Mermaid flowchart. Node ids become `n0`, `n1`, … because builder ids may hold characters
/// Mermaid reserves; labels are quoted with `#quot;` for quotes.
pub(crate) fn mermaid(graph: &FlowGraph, untested: &Untested) -> String {
    let mut out = String::from("flowchart TD\n");
    let index_of = |id: &flowcore::NodeId| graph.nodes.iter().position(|n| &n.id == id);
    for (index, node) in graph.nodes.iter().enumerate() {
        let text = label(node.id.as_str(), node.kind, Some(node.text.as_str()));
        let text = text.replace('"', "#quot;").replace('\n', "<br/>");
        let (open, close) = match node.kind {
            "start" | "end" => ("([", "])"),
            "condition" | "random" => ("{", "}"),
            "question" | "interactive_buttons" | "interactive_list" | "whatsapp_flow" => ("[/", "/]"),
            _ => ("[", "]"),
        };
        let _ = writeln!(out, "    n{index}{open}\"{text}\"{close}");
    }
    for link in &graph.links {
        let (Some(from), Some(to)) = (index_of(&link.from), index_of(&link.to)) else { continue };
        let arrow = if untested.link(link) { "-.->" } else { "-->" };
        match &link.label {
            Some(label) => {
                let label = label.replace('"', "#quot;").replace('|', "#124;");
                let _ = writeln!(out, "    n{from} {arrow}|\"{label}\"| n{to}");
            }
            None => {
                let _ = writeln!(out, "    n{from} {arrow} n{to}");
            }
        }
    }
    let untested_nodes: Vec<String> = graph
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, node)| untested.node(&node.id))
        .map(|(index, _)| format!("n{index}"))
        .collect();
    if !untested_nodes.is_empty() {
        out.push_str("    classDef untested stroke-dasharray: 5 5,stroke:#c00,fill:#fff0f0;\n");
        let _ = writeln!(out, "    class {} untested;", untested_nodes.join(","));
    }
    out
}

/// Graphviz `dot`, ids and labels quoted and escaped.
pub(crate) fn dot(graph: &FlowGraph, untested: &Untested) -> String {
    let mut out = String::from("digraph flow {\n    rankdir=TB;\n    node [shape=box, fontname=\"Helvetica\"];\n");
    for node in &graph.nodes {
        let shape = match node.kind {
            "start" | "end" => "oval",
            "condition" | "random" => "diamond",
            _ => "box",
        };
        let text = label(node.id.as_str(), node.kind, Some(node.text.as_str()));
        let style = if untested.node(&node.id) { UNTESTED_DOT_STYLE } else { "" };
        let _ = writeln!(out, "    {} [label={}, shape={shape}{style}];", quote(node.id.as_str()), quote(&text));
    }
    for link in &graph.links {
        let (from, to) = (quote(link.from.as_str()), quote(link.to.as_str()));
        let mut attributes = Vec::new();
        if let Some(label) = &link.label {
            attributes.push(format!("label={}", quote(label)));
        }
        if untested.link(link) {
            attributes.push(UNTESTED_DOT_STYLE.trim_start_matches(", ").to_string());
        }
        if attributes.is_empty() {
            let _ = writeln!(out, "    {from} -> {to};");
        } else {
            let _ = writeln!(out, "    {from} -> {to} [{}];", attributes.join(", "));
        }
    }
    out.push_str("}\n");
    out
}

/// How `dot` marks what no test reached.
const UNTESTED_DOT_STYLE: &str = ", style=dashed, color=red";

fn quote(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}
