//! What changed between two versions of a flow, by node id and edge id.

use std::collections::HashMap;

use serde::Serialize;

use crate::flow::{Flow, FlowEdge, FlowNode};

/// The nodes and edges one flow version adds, removes and changes against another
/// ([`Flow::diff`]).
///
/// A node counts as changed when its `type` or its `data` differ. Its canvas `position`
/// (and the builder's other layout fields) are not part of a [`FlowNode`], so moving a
/// node in the visual builder is no change. An edge counts as changed when its `source`,
/// `target`, `label`, `sourceHandle`, `weight` or `data` differ: everything that decides
/// where a conversation goes.
///
/// Ids are listed in the order of the flow they come from: added and changed ones in the
/// newer flow's order, removed ones in the older flow's. When a flow repeats an id (which
/// [`Flow::compile`] reports as an error), its first occurrence is the one compared.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlowDiff {
    /// Node ids.
    pub nodes: Changes,
    /// Edge ids.
    pub edges: Changes,
}

/// Ids added, removed and changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    /// In the newer flow only.
    pub added: Vec<String>,
    /// In the older flow only.
    pub removed: Vec<String>,
    /// In both, different.
    pub changed: Vec<String>,
}

impl FlowDiff {
    /// True when the two flows have the same nodes and edges (layout aside).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.edges.is_empty()
    }
}

impl Changes {
    /// True when nothing was added, removed or changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl Flow {
    /// What `newer` adds, removes and changes against `self` (see [`FlowDiff`]).
    ///
    /// ```
    /// use flowcore::Flow;
    /// let v1 = Flow::from_json(r#"{"id": "f", "nodes": [
    ///     {"id": "s", "type": "start", "position": {"x": 0, "y": 0}},
    ///     {"id": "hi", "type": "message", "data": {"content": "Oi"}}],
    ///   "edges": [{"id": "e1", "source": "s", "target": "hi"}]}"#)?;
    /// let v2 = Flow::from_json(r#"{"id": "f", "nodes": [
    ///     {"id": "s", "type": "start", "position": {"x": 40, "y": 90}},
    ///     {"id": "hi", "type": "message", "data": {"content": "Olá"}},
    ///     {"id": "bye", "type": "end"}],
    ///   "edges": [{"id": "e1", "source": "s", "target": "hi"},
    ///             {"id": "e2", "source": "hi", "target": "bye"}]}"#)?;
    /// let diff = v1.diff(&v2);
    /// assert_eq!(diff.nodes.added, ["bye"]);
    /// assert_eq!(diff.nodes.changed, ["hi"]); // "s" only moved on the canvas
    /// assert_eq!(diff.edges.added, ["e2"]);
    /// assert!(v2.diff(&v2).is_empty());
    /// # Ok::<(), flowcore::FlowError>(())
    /// ```
    pub fn diff(&self, newer: &Flow) -> FlowDiff {
        FlowDiff {
            nodes: changes(&self.nodes, &newer.nodes, |n| &n.id, node_differs),
            edges: changes(&self.edges, &newer.edges, |e| &e.id, edge_differs),
        }
    }
}

fn node_differs(old: &FlowNode, new: &FlowNode) -> bool {
    old.kind != new.kind || old.data != new.data
}

fn edge_differs(old: &FlowEdge, new: &FlowEdge) -> bool {
    old.source != new.source
        || old.target != new.target
        || old.label != new.label
        || old.source_handle != new.source_handle
        || old.weight != new.weight
        || old.data != new.data
}

fn changes<T>(old: &[T], new: &[T], id: impl Fn(&T) -> &String, differs: impl Fn(&T, &T) -> bool) -> Changes {
    let (old_by_id, new_by_id) = (first_by_id(old, &id), first_by_id(new, &id));
    let mut out = Changes::default();
    for (i, item) in new.iter().enumerate() {
        let key = id(item);
        if is_repeat(new, i, key, &id) {
            continue;
        }
        match old_by_id.get(key) {
            None => out.added.push(key.clone()),
            Some(before) if differs(before, item) => out.changed.push(key.clone()),
            Some(_) => {}
        }
    }
    for (i, item) in old.iter().enumerate() {
        let key = id(item);
        if !is_repeat(old, i, key, &id) && !new_by_id.contains_key(key) {
            out.removed.push(key.clone());
        }
    }
    out
}

/// Each id's first item.
fn first_by_id<'a, T>(items: &'a [T], id: &impl Fn(&T) -> &String) -> HashMap<&'a String, &'a T> {
    let mut by_id = HashMap::with_capacity(items.len());
    for item in items {
        by_id.entry(id(item)).or_insert(item);
    }
    by_id
}

/// Whether an earlier item of `items` than the `i`th has the id `key`.
fn is_repeat<T>(items: &[T], i: usize, key: &String, id: &impl Fn(&T) -> &String) -> bool {
    items[..i].iter().any(|earlier| id(earlier) == key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(nodes: &str, edges: &str) -> Flow {
        Flow::from_json(&format!(r#"{{"id": "f", "nodes": [{nodes}], "edges": [{edges}]}}"#)).unwrap()
    }

    const START: &str = r#"{"id": "s", "type": "start"}"#;

    #[test]
    fn node_changes_by_type_and_data_not_position() {
        let cases: &[(&str, &str, bool)] = &[
            (
                r#"{"id": "a", "type": "message", "data": {"content": "x"}}"#,
                r#"{"id": "a", "type": "message", "data": {"content": "x"}}"#,
                false,
            ),
            (
                r#"{"id": "a", "type": "message", "position": {"x": 0, "y": 0}}"#,
                r#"{"id": "a", "type": "message", "position": {"x": 9, "y": 9}, "selected": true}"#,
                false,
            ),
            (
                r#"{"id": "a", "type": "message", "data": {"content": "x"}}"#,
                r#"{"id": "a", "type": "message", "data": {"content": "y"}}"#,
                true,
            ),
            (
                r#"{"id": "a", "type": "message", "data": {"content": "x"}}"#,
                r#"{"id": "a", "type": "end", "data": {"content": "x"}}"#,
                true,
            ),
            (r#"{"id": "a", "type": "message"}"#, r#"{"id": "a", "type": "message", "data": {"delay": 1}}"#, true),
            (r#"{"id": "a", "type": "message", "data": null}"#, r#"{"id": "a", "type": "message", "data": {}}"#, false),
        ];
        for (old, new, changed) in cases {
            let diff = flow(old, "").diff(&flow(new, ""));
            let expected: Vec<String> = if *changed { vec!["a".into()] } else { vec![] };
            assert_eq!(diff.nodes.changed, expected, "{old} -> {new}");
            assert!(diff.nodes.added.is_empty() && diff.nodes.removed.is_empty());
        }
    }

    #[test]
    fn edge_changes_by_what_routes() {
        let base = r#"{"id": "e", "source": "s", "target": "a", "label": "x", "sourceHandle": "h"}"#;
        let cases: &[(&str, bool)] = &[
            (base, false),
            (
                r#"{"id": "e", "source": "s", "target": "a", "label": "x", "sourceHandle": "h", "animated": true}"#,
                false,
            ),
            (r#"{"id": "e", "source": "a", "target": "a", "label": "x", "sourceHandle": "h"}"#, true),
            (r#"{"id": "e", "source": "s", "target": "s", "label": "x", "sourceHandle": "h"}"#, true),
            (r#"{"id": "e", "source": "s", "target": "a", "label": null, "sourceHandle": "h"}"#, true),
            (r#"{"id": "e", "source": "s", "target": "a", "label": "x", "sourceHandle": "i"}"#, true),
            (r#"{"id": "e", "source": "s", "target": "a", "label": "x", "sourceHandle": "h", "weight": 2}"#, true),
        ];
        for (new, changed) in cases {
            let diff = flow(START, base).diff(&flow(START, new));
            let expected: Vec<String> = if *changed { vec!["e".into()] } else { vec![] };
            assert_eq!(diff.edges.changed, expected, "{new}");
        }
    }

    #[test]
    fn added_and_removed_in_flow_order() {
        let old = flow(
            r#"{"id": "s", "type": "start"}, {"id": "z", "type": "end"}, {"id": "b", "type": "end"}"#,
            r#"{"id": "e1", "source": "s", "target": "z"}"#,
        );
        let new = flow(
            r#"{"id": "s", "type": "start"}, {"id": "y", "type": "end"}, {"id": "c", "type": "end"}"#,
            r#"{"id": "e2", "source": "s", "target": "y"}"#,
        );
        let diff = old.diff(&new);
        assert_eq!(
            diff.nodes,
            Changes { added: vec!["y".into(), "c".into()], removed: vec!["z".into(), "b".into()], changed: vec![] }
        );
        assert_eq!(diff.edges, Changes { added: vec!["e2".into()], removed: vec!["e1".into()], changed: vec![] });
        let back = new.diff(&old);
        assert_eq!(back.nodes.added, diff.nodes.removed);
        assert_eq!(back.nodes.removed, diff.nodes.added);
    }

    #[test]
    fn a_repeated_id_is_listed_once_and_compared_by_its_first_occurrence() {
        let old = flow(r#"{"id": "a", "type": "message"}, {"id": "a", "type": "end"}"#, "");
        let new = flow(
            r#"{"id": "a", "type": "message"}, {"id": "a", "type": "start"}, {"id": "n", "type": "end"}, {"id": "n", "type": "end"}"#,
            "",
        );
        let diff = old.diff(&new);
        assert_eq!(diff.nodes, Changes { added: vec!["n".into()], removed: vec![], changed: vec![] });
        assert!(new.diff(&old).nodes.removed == ["n"]);
    }

    #[test]
    fn serializes_as_plain_lists() {
        let diff = flow(START, "").diff(&flow("", ""));
        assert_eq!(
            serde_json::to_value(&diff).unwrap(),
            serde_json::json!({"nodes": {"added": [], "removed": ["s"], "changed": []},
                               "edges": {"added": [], "removed": [], "changed": []}})
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn arb_flow() -> impl Strategy<Value = Flow> {
            let node = (0u8..6, prop::sample::select(vec!["message", "end", "question"]), 0u8..3).prop_map(
                |(id, kind, content)| FlowNode {
                    id: format!("n{id}"),
                    kind: kind.to_owned(),
                    data: serde_json::json!({"content": content}).as_object().unwrap().clone(),
                },
            );
            let edge = (0u8..6, 0u8..6, 0u8..6).prop_map(|(id, s, t)| FlowEdge {
                id: format!("e{id}"),
                source: format!("n{s}"),
                target: format!("n{t}"),
                ..FlowEdge::default()
            });
            (prop::collection::vec(node, 0..8), prop::collection::vec(edge, 0..8)).prop_map(|(nodes, edges)| Flow {
                id: "f".into(),
                nodes,
                edges,
                ..Flow::default()
            })
        }

        proptest! {
            #[test]
            fn a_diff_reversed_swaps_added_and_removed(a in arb_flow(), b in arb_flow()) {
                let (ab, ba) = (a.diff(&b), b.diff(&a));
                prop_assert_eq!(&ab.nodes.added, &ba.nodes.removed);
                prop_assert_eq!(&ab.edges.removed, &ba.edges.added);
                let sorted = |mut v: Vec<String>| { v.sort(); v };
                prop_assert_eq!(sorted(ab.nodes.changed.clone()), sorted(ba.nodes.changed.clone()));
                prop_assert!(a.diff(&a).is_empty());
            }
        }
    }
}
