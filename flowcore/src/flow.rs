//! The builder's flow JSON, as data.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::compile::{compile, CompiledFlow};
use crate::diagnostic::CompileError;

/// A flow as the visual builder exports it: nodes, edges and declared variables.
///
/// Unknown fields (React Flow's `position`, `width`, `selected`, …) are accepted and
/// ignored. Node settings stay as the builder wrote them in [`FlowNode::data`];
/// [`Flow::compile`] reads and checks them.
///
/// ```
/// use flowcore::Flow;
/// let flow = Flow::from_json(r#"{
///   "id": "hi", "name": "Hi",
///   "nodes": [{"id": "s", "type": "start", "position": {"x": 0, "y": 0}},
///             {"id": "m", "type": "message", "data": {"content": "Olá!"}}],
///   "edges": [{"id": "e1", "source": "s", "target": "m"}]
/// }"#)?;
/// assert_eq!(flow.nodes.len(), 2);
/// let compiled = flow.compile().expect("a valid flow");
/// assert_eq!(compiled.id(), "hi");
/// # Ok::<(), flowcore::FlowError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    /// The flow's id (sessions remember it).
    #[serde(default, deserialize_with = "stringish")]
    pub id: String,
    /// A human name.
    #[serde(default, deserialize_with = "stringish")]
    pub name: String,
    /// Declared variables and their default values; templates and conditions read them
    /// when the session has no variable of that name.
    #[serde(default, deserialize_with = "object_or_null")]
    pub variables: Map<String, Value>,
    /// The nodes.
    #[serde(default)]
    pub nodes: Vec<FlowNode>,
    /// The edges between nodes.
    #[serde(default)]
    pub edges: Vec<FlowEdge>,
}

/// One node of a flow.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowNode {
    /// The node's id, unique in the flow.
    #[serde(deserialize_with = "stringish")]
    pub id: String,
    /// The node type, such as `"message"` or `"question"`.
    #[serde(rename = "type", deserialize_with = "stringish")]
    pub kind: String,
    /// The node's settings, camelCase as the builder writes them (`content`,
    /// `variableName`, `validationType`, …).
    #[serde(default, deserialize_with = "object_or_null")]
    pub data: Map<String, Value>,
}

/// An edge from one node to another.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowEdge {
    /// The edge's id.
    #[serde(default, deserialize_with = "stringish")]
    pub id: String,
    /// The node the edge leaves.
    #[serde(deserialize_with = "stringish")]
    pub source: String,
    /// The node the edge enters.
    #[serde(deserialize_with = "stringish")]
    pub target: String,
    /// The edge's label (`"true"`/`"false"` on conditions, a weight on `random`).
    #[serde(default, deserialize_with = "opt_stringish", skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The handle the edge leaves from: a button id, `"true"`, `"invalid"`, `"timeout"`,
    /// `"success"`, `"failure"`, ….
    #[serde(
        default,
        rename = "sourceHandle",
        deserialize_with = "opt_stringish",
        skip_serializing_if = "Option::is_none"
    )]
    pub source_handle: Option<String>,
    /// A weight for the edges of a `random` node (also read from `data.weight` or a
    /// numeric label such as `"70%"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// Extra edge settings the builder stores.
    #[serde(default, deserialize_with = "object_or_null", skip_serializing_if = "Map::is_empty")]
    pub data: Map<String, Value>,
}

/// Why a flow could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlowError {
    /// The text is not valid JSON.
    #[error("invalid JSON at line {line}, column {column}: {message}")]
    Syntax {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What the parser expected.
        message: String,
    },
    /// The JSON is valid but is not a flow (a missing node id, a list where an object belongs, …).
    #[error("not a flow at line {line}, column {column}: {message}")]
    Shape {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What was wrong.
        message: String,
    },
}

impl Flow {
    /// Reads a flow from the builder's JSON.
    ///
    /// ```
    /// use flowcore::{Flow, FlowError};
    /// let err = Flow::from_json("{\n  \"nodes\": [,]\n}").unwrap_err();
    /// assert!(matches!(err, FlowError::Syntax { line: 2, .. }));
    /// ```
    pub fn from_json(text: &str) -> Result<Flow, FlowError> {
        serde_json::from_str(text).map_err(|e| {
            let (line, column) = (e.line(), e.column());
            let message = strip_position(&e.to_string());
            match e.classify() {
                serde_json::error::Category::Data => FlowError::Shape { line, column, message },
                _ => FlowError::Syntax { line, column, message },
            }
        })
    }

    /// Checks the flow and compiles it for running. Errors and warnings come back as
    /// [`Diagnostic`](crate::Diagnostic)s; warnings of a flow that compiles are kept in
    /// [`CompiledFlow::warnings`].
    pub fn compile(&self) -> Result<CompiledFlow, CompileError> {
        compile(self)
    }
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

fn stringish<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(opt_stringish(d)?.unwrap_or_default())
}

fn opt_stringish<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde::de::Error;
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        other => Err(D::Error::custom(format!("expected a string, found {other}"))),
    }
}

fn object_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
    use serde::de::Error;
    match Value::deserialize(d)? {
        Value::Null => Ok(Map::new()),
        Value::Object(m) => Ok(m),
        other => Err(D::Error::custom(format!("expected an object, found {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_and_loose_shapes_are_accepted() {
        let flow = Flow::from_json(
            r#"{"id": 7, "label": "x", "nodes": [{"id": 1, "type": "start", "data": null, "selected": true,
                 "position": {"x": 1, "y": 2}, "width": 100}],
                "edges": [{"source": 1, "target": "2", "label": null, "animated": true}]}"#,
        )
        .unwrap();
        assert_eq!(flow.id, "7");
        assert_eq!(flow.nodes[0].id, "1");
        assert!(flow.nodes[0].data.is_empty());
        assert_eq!(flow.edges[0].label, None);
    }

    #[test]
    fn errors_carry_positions() {
        match Flow::from_json("{\"nodes\": [\n  {\"type\": \"start\"}\n]}") {
            Err(FlowError::Shape { line: 2, message, .. }) => assert!(message.contains("id"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(Flow::from_json(""), Err(FlowError::Syntax { line: 1, .. })));
        let text = Flow::from_json("{\"nodes\": 3}").unwrap_err().to_string();
        assert!(text.starts_with("not a flow at line 1, column 11: invalid type"), "{text}");
    }
}
