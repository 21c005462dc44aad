//! The set of compiled flows a host hands the engine, so that `call_flow` nodes find the
//! flows they call; and the checks of a flow's calls against that set.

use std::collections::HashMap;
use std::sync::Arc;

use crate::compile::{CompiledFlow, Kind};
use crate::diagnostic::Diagnostic;

/// How many `call_flow` calls may be nested at once. A call beyond it fails the turn with
/// [`SessionError::CallDepthExceeded`](crate::SessionError::CallDepthExceeded), which
/// names the chain; [`FlowSet::check`] reports a chain that always nests deeper.
pub const MAX_CALL_DEPTH: usize = 8;

/// The compiled flows of one organization, by id: what a [`Session`](crate::Session) runs
/// with when its flow calls others ([`Session::handle_in`](crate::Session::handle_in)).
///
/// The engine stays pure: the host loads and compiles the flows, and hands them in. A set
/// is cheap to clone (the flows are shared) and can be kept between turns.
///
/// ```
/// use flowcore::{Flow, FlowSet};
/// let caller = Flow::from_json(include_str!("../tests/flows/cadastro.json"))?.compile().unwrap();
/// let callee = Flow::from_json(include_str!("../tests/flows/endereco.json"))?.compile().unwrap();
///
/// let alone = FlowSet::from_iter([caller.clone()]);
/// let missing = alone.check(&caller);
/// assert_eq!(missing[0].code, "unknown-flow");
///
/// let set = FlowSet::from_iter([caller.clone(), callee]);
/// assert!(set.check(&caller).is_empty());
/// assert_eq!(set.get("endereco").map(|f| f.name()), Some("Endereço"));
/// # Ok::<(), flowcore::FlowError>(())
/// ```
#[derive(Clone, Default)]
pub struct FlowSet {
    flows: Arc<HashMap<Box<str>, CompiledFlow>>,
}

impl FlowSet {
    /// An empty set.
    pub fn new() -> FlowSet {
        FlowSet::default()
    }

    /// Adds a flow under its id; returns the flow that had that id before, if any.
    pub fn insert(&mut self, flow: CompiledFlow) -> Option<CompiledFlow> {
        Arc::make_mut(&mut self.flows).insert(flow.id().into(), flow)
    }

    /// The flow with this id.
    pub fn get(&self, id: &str) -> Option<&CompiledFlow> {
        self.flows.get(id)
    }

    /// Whether the set has a flow with this id.
    pub fn contains(&self, id: &str) -> bool {
        self.flows.contains_key(id)
    }

    /// How many flows the set holds.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether the set holds no flow.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// The flows, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &CompiledFlow> {
        self.flows.values()
    }

    /// Checks `flow`'s calls against this set (`flow` itself need not be in it):
    ///
    /// - `unknown-flow` (error) at each `call_flow` node whose flow the set lacks;
    /// - `recursive-call` (warning) for each cycle of calls reachable from `flow`, such as
    ///   `menu → pedido → menu`: every round nests one more call, and a session that nests
    ///   more than [`MAX_CALL_DEPTH`] fails;
    /// - `call-chain-too-deep` (error) when a chain of calls without a cycle nests more
    ///   than [`MAX_CALL_DEPTH`] calls.
    ///
    /// Flows further down a chain are not checked for their own unknown calls: check each.
    pub fn check(&self, flow: &CompiledFlow) -> Vec<Diagnostic> {
        let root: &str = flow.id();
        let find = |id: &str| if id == root { Some(flow) } else { self.get(id) };
        let call_node = |callee: &str| {
            flow.inner.nodes.iter().find_map(|n| match &n.kind {
                Kind::CallFlow(call) if &*call.flow == callee => Some(n.id.as_str()),
                _ => None,
            })
        };
        let mut diags = Vec::new();
        for node in &flow.inner.nodes {
            if let Kind::CallFlow(call) = &node.kind {
                if find(&call.flow).is_none() {
                    diags.push(
                        Diagnostic::error(
                            "unknown-flow",
                            format!("calls flow {:?}, which is not in the set of flows", call.flow),
                        )
                        .at_node(node.id.as_str()),
                    );
                }
            }
        }

        // Depth-first over the call graph, without recursion (a set can be large): the
        // longest chain below each finished flow, and the cycles met on the way.
        let callees = |id: &str| find(id).map(|f| &f.inner.called_flows[..]).unwrap_or_default();
        let mut longest: HashMap<&str, (usize, Option<&str>)> = HashMap::new();
        let mut path: Vec<(&str, usize)> = vec![(root, 0)];
        let mut cycles: Vec<Vec<&str>> = Vec::new();
        while let Some(&(id, next)) = path.last() {
            let calls = callees(id);
            let Some(callee) = calls.get(next).map(|c| &**c) else {
                let best = calls
                    .iter()
                    .filter(|c| !path.iter().any(|(p, _)| *p == &***c))
                    .map(|c| (1 + longest.get(&**c).map_or(0, |l| l.0), Some(&**c)))
                    .max_by_key(|(depth, _)| *depth)
                    .unwrap_or((0, None));
                longest.insert(id, best);
                path.pop();
                continue;
            };
            if let Some(top) = path.last_mut() {
                top.1 += 1;
            }
            if let Some(at) = path.iter().position(|(p, _)| *p == callee) {
                let mut cycle: Vec<&str> = path[at..].iter().map(|(p, _)| *p).collect();
                let mut members = cycle.clone();
                members.sort_unstable();
                if !cycles.iter().any(|c| {
                    let mut seen = c[..c.len() - 1].to_vec();
                    seen.sort_unstable();
                    seen == members
                }) {
                    let entry = path.get(1).map_or(callee, |(p, _)| *p);
                    cycle.push(callee);
                    let chain = cycle.join(" → ");
                    let mut d = Diagnostic::warning(
                        "recursive-call",
                        format!(
                            "the flows call each other in a cycle, {chain}: every round nests one more call, \
                             and a session that nests more than {MAX_CALL_DEPTH} stops with an error"
                        ),
                    );
                    if let Some(node) = call_node(entry) {
                        d = d.at_node(node);
                    }
                    diags.push(d);
                    cycles.push(cycle);
                }
                continue;
            }
            if !longest.contains_key(callee) && find(callee).is_some() {
                path.push((callee, 0));
            }
        }

        let depth = longest.get(root).map_or(0, |l| l.0);
        if depth > MAX_CALL_DEPTH {
            let mut chain = vec![root];
            while let Some((_, Some(next))) = longest.get(chain[chain.len() - 1]) {
                chain.push(next);
            }
            let mut d = Diagnostic::error(
                "call-chain-too-deep",
                format!(
                    "the chain {} nests {depth} calls; a session stops with an error beyond {MAX_CALL_DEPTH}",
                    chain.join(" → ")
                ),
            );
            if let Some(node) = chain.get(1).and_then(|first| call_node(first)) {
                d = d.at_node(node);
            }
            diags.push(d);
        }
        diags
    }
}

impl FromIterator<CompiledFlow> for FlowSet {
    fn from_iter<I: IntoIterator<Item = CompiledFlow>>(flows: I) -> FlowSet {
        let mut set = FlowSet::new();
        set.extend(flows);
        set
    }
}

impl Extend<CompiledFlow> for FlowSet {
    fn extend<I: IntoIterator<Item = CompiledFlow>>(&mut self, flows: I) {
        let map = Arc::make_mut(&mut self.flows);
        for flow in flows {
            map.insert(flow.id().into(), flow);
        }
    }
}

impl std::fmt::Debug for FlowSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&str> = self.flows.keys().map(|k| &**k).collect();
        ids.sort_unstable();
        f.debug_struct("FlowSet").field("flows", &ids).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A flow `id` whose start goes through a `call_flow` node per id in `calls`.
    fn calling(id: &str, calls: &[&str]) -> CompiledFlow {
        let mut nodes = vec![json!({"id": "s", "type": "start"})];
        let mut edges = Vec::new();
        let mut from = "s".to_string();
        for (i, callee) in calls.iter().enumerate() {
            let node = format!("call_{i}");
            nodes.push(json!({"id": node, "type": "call_flow", "data": {"flowId": callee}}));
            edges.push(json!({"id": format!("e{i}"), "source": from, "target": node}));
            from = node;
        }
        let flow: crate::Flow = serde_json::from_value(json!({"id": id, "nodes": nodes, "edges": edges})).unwrap();
        flow.compile().unwrap()
    }

    fn codes(diags: &[Diagnostic]) -> Vec<(&str, Option<&str>)> {
        diags.iter().map(|d| (d.code, d.node.as_deref())).collect()
    }

    #[test]
    fn unknown_flows_are_errors_at_their_nodes() {
        let a = calling("a", &["b", "x", "a"]);
        let set = FlowSet::from_iter([calling("b", &["y"])]);
        let diags = set.check(&a);
        // `a` calling itself is a cycle (found without `a` in the set); `b`'s own unknown
        // call is `b`'s to report.
        assert_eq!(codes(&diags), [("unknown-flow", Some("call_1")), ("recursive-call", Some("call_2"))], "{diags:?}");
        assert!(diags[0].is_error() && diags[0].message.contains("\"x\""));
        assert!(diags[1].message.contains("a → a"), "{}", diags[1].message);
        assert!(set.check(&calling("b", &["y"])).iter().any(|d| d.code == "unknown-flow"));
    }

    #[test]
    fn a_cycle_is_reported_once_with_its_chain() {
        let menu = calling("menu", &["pedido"]);
        let set =
            FlowSet::from_iter([menu.clone(), calling("pedido", &["pagamento", "menu"]), calling("pagamento", &[])]);
        let diags = set.check(&menu);
        assert_eq!(codes(&diags), [("recursive-call", Some("call_0"))]);
        assert!(!diags[0].is_error());
        assert!(diags[0].message.contains("menu → pedido → menu"), "{}", diags[0].message);
    }

    #[test]
    fn a_chain_deeper_than_the_bound_is_an_error_that_names_it() {
        let ids: Vec<String> = (0..=MAX_CALL_DEPTH + 1).map(|i| format!("f{i}")).collect();
        let flows: Vec<CompiledFlow> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| calling(id, &ids.get(i + 1).map(|n| vec![n.as_str()]).unwrap_or_default()))
            .collect();
        let set = FlowSet::from_iter(flows.clone());
        let diags = set.check(&flows[0]);
        assert_eq!(codes(&diags), [("call-chain-too-deep", Some("call_0"))]);
        assert!(diags[0].message.starts_with("the chain f0 → f1 → f2"), "{}", diags[0].message);
        assert!(diags[0].message.contains(&format!("nests {} calls", MAX_CALL_DEPTH + 1)));
        // One call less is within the bound.
        assert!(set.check(&flows[1]).is_empty());
    }

    #[test]
    fn many_paths_through_the_same_flows_are_walked_once_each() {
        // Every flow calls every later one: exponentially many chains, one walk.
        let ids: Vec<String> = (0..40).map(|i| format!("f{i}")).collect();
        let flows: Vec<CompiledFlow> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| calling(id, &ids[i + 1..].iter().map(String::as_str).collect::<Vec<_>>()))
            .collect();
        let set = FlowSet::from_iter(flows.clone());
        let diags = set.check(&flows[0]);
        assert_eq!(codes(&diags), [("call-chain-too-deep", Some("call_0"))]);
        assert!(diags[0].message.contains("nests 39 calls"), "{}", diags[0].message);
    }

    #[test]
    fn insert_replaces_by_id_and_clones_share() {
        let mut set = FlowSet::new();
        assert!(set.insert(calling("a", &[])).is_none());
        let copy = set.clone();
        assert!(set.insert(calling("a", &["b"])).is_some());
        assert_eq!(set.len(), 1);
        assert_eq!(set.get("a").map(|f| f.called_flows().count()), Some(1));
        assert_eq!(copy.get("a").map(|f| f.called_flows().count()), Some(0));
        assert_eq!(format!("{set:?}"), r#"FlowSet { flows: ["a"] }"#);
    }
}
