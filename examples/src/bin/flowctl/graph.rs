//! `flowctl graph`: the flow as a Mermaid or Graphviz diagram.

use std::fmt::Write as _;
use std::path::Path;

use flowcore::FlowGraph;

use crate::load::compile_flow;
use crate::{Failure, GraphFormat};

/// Prints the diagram of a flow that compiles.
pub(crate) fn run(path: &Path, format: GraphFormat) -> Result<u8, Failure> {
    let flow = compile_flow(path)?;
    let graph = flow.graph();
    let text = match format {
        GraphFormat::Mermaid => mermaid(&graph),
        GraphFormat::Dot => dot(&graph),
    };
    print!("{text}");
    Ok(0)
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
pub(crate) fn mermaid(graph: &FlowGraph) -> String {
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
        match &link.label {
            Some(label) => {
                let label = label.replace('"', "#quot;").replace('|', "#124;");
                let _ = writeln!(out, "    n{from} -->|\"{label}\"| n{to}");
            }
            None => {
                let _ = writeln!(out, "    n{from} --> n{to}");
            }
        }
    }
    out
}

/// Graphviz `dot`, ids and labels quoted and escaped.
pub(crate) fn dot(graph: &FlowGraph) -> String {
    let mut out = String::from("digraph flow {\n    rankdir=TB;\n    node [shape=box, fontname=\"Helvetica\"];\n");
    for node in &graph.nodes {
        let shape = match node.kind {
            "start" | "end" => "oval",
            "condition" | "random" => "diamond",
            _ => "box",
        };
        let text = label(node.id.as_str(), node.kind, Some(node.text.as_str()));
        let _ = writeln!(out, "    {} [label={}, shape={shape}];", quote(node.id.as_str()), quote(&text));
    }
    for link in &graph.links {
        match &link.label {
            Some(label) => {
                let _ = writeln!(
                    out,
                    "    {} -> {} [label={}];",
                    quote(link.from.as_str()),
                    quote(link.to.as_str()),
                    quote(label)
                );
            }
            None => {
                let _ = writeln!(out, "    {} -> {};", quote(link.from.as_str()), quote(link.to.as_str()));
            }
        }
    }
    out.push_str("}\n");
    out
}

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
