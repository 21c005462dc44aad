//! Which nodes and edges of a flow a set of conversations reached.

use std::collections::HashSet;

use flowcore::CompiledFlow;
use serde::{Deserialize, Serialize};

/// The nodes and edges reached so far, counted over every conversation run against one
/// flow. An edge is reached when a turn went from its source node straight to its target.
#[derive(Debug, Clone)]
pub struct Coverage {
    flow_id: String,
    nodes: Vec<String>,
    edges: Vec<Edge>,
    reached_nodes: HashSet<String>,
    reached_edges: HashSet<(String, String)>,
}

/// An edge of the flow's graph, as the coverage report names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    /// The source node id.
    pub from: String,
    /// The target node id.
    pub to: String,
    /// The branch label (`"true"`, an option id, …), `None` for the default way on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// What `--coverage-json` writes and `flowctl graph --coverage` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoverageReport {
    /// The flow's id.
    pub flow: String,
    /// The nodes.
    pub nodes: Tally<String>,
    /// The edges.
    pub edges: Tally<Edge>,
}

/// Totals and the items no test reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tally<T> {
    /// How many there are.
    pub total: usize,
    /// How many were reached.
    pub covered: usize,
    /// The share reached, in percent with one decimal (100 when there are none).
    pub percent: f64,
    /// The ones not reached, in the flow's order.
    pub untested: Vec<T>,
}

impl Coverage {
    /// Nothing reached yet.
    ///
    /// ```
    /// use flowcore::Flow;
    /// use flowcore_examples::transcript::Coverage;
    /// let flow = Flow::from_json(r#"{"id":"f","nodes":[{"id":"s","type":"start"},{"id":"m","type":"message","data":{"content":"oi"}}],
    ///   "edges":[{"id":"e","source":"s","target":"m"}]}"#)?.compile().expect("valid");
    /// let mut coverage = Coverage::new(&flow);
    /// coverage.record_turn(None, ["s", "m"]);
    /// assert_eq!(coverage.report().nodes.percent, 100.0);
    /// assert!(coverage.report().edges.untested.is_empty());
    /// # Ok::<(), flowcore::FlowError>(())
    /// ```
    pub fn new(flow: &CompiledFlow) -> Self {
        let graph = flow.graph();
        Coverage {
            flow_id: flow.id().to_string(),
            nodes: graph.nodes.iter().map(|n| n.id.as_str().to_string()).collect(),
            edges: graph
                .links
                .iter()
                .map(|l| Edge {
                    from: l.from.as_str().to_string(),
                    to: l.to.as_str().to_string(),
                    label: l.label.clone(),
                })
                .collect(),
            reached_nodes: HashSet::new(),
            reached_edges: HashSet::new(),
        }
    }

    /// Records one turn: the node the session waited at before it (if it waited), then
    /// the nodes the turn visited, in order.
    pub fn record_turn<'a>(&mut self, waited_at: Option<&str>, visited: impl IntoIterator<Item = &'a str>) {
        let mut previous = waited_at.map(str::to_string);
        for node in visited {
            if let Some(from) = previous.take() {
                self.reached_edges.insert((from, node.to_string()));
            }
            self.reached_nodes.insert(node.to_string());
            previous = Some(node.to_string());
        }
    }

    /// The totals and what is left untested.
    pub fn report(&self) -> CoverageReport {
        let untested_nodes: Vec<String> =
            self.nodes.iter().filter(|n| !self.reached_nodes.contains(*n)).cloned().collect();
        let untested_edges: Vec<Edge> = self
            .edges
            .iter()
            .filter(|e| !self.reached_edges.contains(&(e.from.clone(), e.to.clone())))
            .cloned()
            .collect();
        CoverageReport {
            flow: self.flow_id.clone(),
            nodes: Tally::of(self.nodes.len(), untested_nodes),
            edges: Tally::of(self.edges.len(), untested_edges),
        }
    }
}

impl<T> Tally<T> {
    fn of(total: usize, untested: Vec<T>) -> Self {
        let covered = total - untested.len();
        let percent = if total == 0 { 100.0 } else { (covered as f64 * 1000.0 / total as f64).round() / 10.0 };
        Tally { total, covered, percent, untested }
    }
}

impl CoverageReport {
    /// The report for people: totals, then the untested nodes and edges.
    ///
    /// ```
    /// use flowcore_examples::transcript::{CoverageReport, Edge, Tally};
    /// let report = CoverageReport {
    ///     flow: "f".into(),
    ///     nodes: Tally { total: 2, covered: 1, percent: 50.0, untested: vec!["m".into()] },
    ///     edges: Tally { total: 1, covered: 0, percent: 0.0,
    ///                    untested: vec![Edge { from: "s".into(), to: "m".into(), label: None }] },
    /// };
    /// assert_eq!(report.to_text(), "coverage of flow f: nodes 1/2 (50.0%), edges 0/1 (0.0%)\n  untested nodes: m\n  untested edges: s -> m\n");
    /// ```
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "coverage of flow {}: nodes {}/{} ({:.1}%), edges {}/{} ({:.1}%)\n",
            self.flow,
            self.nodes.covered,
            self.nodes.total,
            self.nodes.percent,
            self.edges.covered,
            self.edges.total,
            self.edges.percent
        );
        if !self.nodes.untested.is_empty() {
            text.push_str(&format!("  untested nodes: {}\n", self.nodes.untested.join(", ")));
        }
        if !self.edges.untested.is_empty() {
            let edges: Vec<String> = self.edges.untested.iter().map(Edge::to_string).collect();
            text.push_str(&format!("  untested edges: {}\n", edges.join(", ")));
        }
        text
    }
}

impl std::fmt::Display for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.label {
            Some(label) => write!(f, "{} -> {} ({label})", self.from, self.to),
            None => write!(f, "{} -> {}", self.from, self.to),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowcore::Flow;

    fn flow() -> CompiledFlow {
        let json = r#"{"id": "f", "nodes": [
            {"id": "s", "type": "start"},
            {"id": "ask", "type": "question", "data": {"content": "Idade?", "variableName": "age"}},
            {"id": "adult", "type": "condition", "data": {"condition": {"variableName": "age", "operator": ">=", "value": 18}}},
            {"id": "yes", "type": "end", "data": {"content": "ok"}},
            {"id": "no", "type": "end", "data": {"content": "não"}}],
          "edges": [{"id": "e1", "source": "s", "target": "ask"}, {"id": "e2", "source": "ask", "target": "adult"},
                    {"id": "e3", "source": "adult", "target": "yes", "label": "true"},
                    {"id": "e4", "source": "adult", "target": "no", "label": "false"}]}"#;
        Flow::from_json(json).unwrap().compile().unwrap()
    }

    #[test]
    fn edges_join_the_waiting_node_to_the_next_turn() {
        let mut coverage = Coverage::new(&flow());
        coverage.record_turn(None, ["s", "ask"]);
        coverage.record_turn(Some("ask"), ["adult", "yes"]);
        let report = coverage.report();
        assert_eq!(report.nodes.untested, ["no"]);
        assert_eq!(report.nodes.percent, 80.0);
        assert_eq!(
            report.edges.untested,
            [Edge { from: "adult".into(), to: "no".into(), label: Some("false".into()) }]
        );
        assert_eq!((report.edges.covered, report.edges.total, report.edges.percent), (3, 4, 75.0));
    }

    #[test]
    fn nodes_visited_apart_do_not_make_an_edge() {
        let mut coverage = Coverage::new(&flow());
        coverage.record_turn(None, ["s"]);
        coverage.record_turn(None, ["adult"]);
        assert_eq!(coverage.report().edges.covered, 0);
    }
}
