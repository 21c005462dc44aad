//! `Flow` → `CompiledFlow`: ids become indices, templates and regexes are parsed once,
//! edges are resolved, and every check of the flow's shape happens here.

pub(crate) mod whatsapp_flow;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use regex::RegexBuilder;
use serde_json::{Map, Value};

use crate::condition::Cond;
use crate::datetime::{parse_hhmm, parse_offset, parse_weekday};
use crate::diagnostic::{CompileError, Diagnostic};
use crate::expr::Expr;
use crate::flow::{Flow, FlowNode};
use crate::template::{JsonTemplate, Template};
use crate::validate::{QuestionOption, Validation};
use crate::value::VarPath;
use crate::{MediaKind, NodeId};

/// WhatsApp's limits for interactive messages.
const MAX_BUTTONS: usize = 3;
const MAX_BUTTON_TITLE: usize = 20;
const MAX_LIST_ROWS: usize = 10;
const MAX_ROW_TITLE: usize = 24;
const MAX_ROW_DESCRIPTION: usize = 72;
/// `maxRetries` when a waiting node does not say.
const DEFAULT_MAX_RETRIES: u64 = 3;

/// A checked, compiled flow, ready to run sessions.
///
/// Immutable and cheap to clone (an `Arc` inside); share one between threads and
/// sessions.
///
/// ```
/// use flowcore::Flow;
/// let flow = Flow::from_json(include_str!("../tests/flows/lead.json"))?.compile().unwrap();
/// assert_eq!(flow.id(), "lead");
/// assert!(flow.contains_node("ask_age"));
/// let graph = flow.graph();
/// assert!(graph.links.iter().any(|l| l.from.as_str() == "adult" && l.label.as_deref() == Some("true")));
/// # Ok::<(), flowcore::FlowError>(())
/// ```
#[derive(Clone)]
pub struct CompiledFlow {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) id: Box<str>,
    pub(crate) name: Box<str>,
    pub(crate) nodes: Vec<Node>,
    pub(crate) index: HashMap<NodeId, u32>,
    pub(crate) start: u32,
    pub(crate) defaults: Map<String, Value>,
    pub(crate) warnings: Vec<Diagnostic>,
    /// The ids of the flows this flow's `call_flow` nodes call, sorted, each once.
    pub(crate) called_flows: Box<[Box<str>]>,
}

impl Inner {
    /// The node at `index`.
    ///
    /// Indices come from compile (node targets) or from [`Inner::lookup`], so they are
    /// always in range: an out-of-range index is a bug in this crate.
    pub(crate) fn node(&self, index: u32) -> &Node {
        &self.nodes[index as usize]
    }

    pub(crate) fn lookup(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }
}

/// A diagram view of a compiled flow: every node and every link the engine can follow.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct FlowGraph {
    /// The nodes, in the flow's order.
    pub nodes: Vec<GraphNode>,
    /// The links, grouped by source node.
    pub links: Vec<GraphLink>,
}

/// A node of a [`FlowGraph`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct GraphNode {
    /// The node's id.
    pub id: NodeId,
    /// The node type, such as `"question"`.
    pub kind: &'static str,
    /// A short description: the message text, the condition, the variable, ….
    pub text: String,
    /// Whether this is the start node.
    pub is_start: bool,
}

/// A link of a [`FlowGraph`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct GraphLink {
    /// The node the link leaves.
    pub from: NodeId,
    /// The node the link enters.
    pub to: NodeId,
    /// `"true"`/`"false"`, an option id, `"invalid"`, `"timeout"`, `"success"`/`"failure"`,
    /// `"open"`/`"closed"`, a weight such as `"70%"`; `None` for the default way on.
    pub label: Option<String>,
}

impl CompiledFlow {
    /// The flow's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The flow's human name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The warnings compile found (the flow runs anyway).
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.inner.warnings
    }

    /// Whether the flow has a node with this id.
    pub fn contains_node(&self, id: &str) -> bool {
        self.inner.index.contains_key(id)
    }

    /// How many nodes the flow has.
    pub fn node_count(&self) -> usize {
        self.inner.nodes.len()
    }

    /// The start node's id.
    pub fn start_node(&self) -> &NodeId {
        &self.inner.node(self.inner.start).id
    }

    /// The flow's declared variables and their defaults.
    pub fn declared_variables(&self) -> &Map<String, Value> {
        &self.inner.defaults
    }

    /// The ids of the flows this flow's `call_flow` nodes call, sorted, each once: what a
    /// host must put in the [`FlowSet`](crate::FlowSet) it runs the flow with.
    ///
    /// ```
    /// use flowcore::Flow;
    /// let flow = Flow::from_json(include_str!("../tests/flows/cadastro.json"))?.compile().unwrap();
    /// assert_eq!(flow.called_flows().collect::<Vec<_>>(), ["endereco"]);
    /// # Ok::<(), flowcore::FlowError>(())
    /// ```
    pub fn called_flows(&self) -> impl Iterator<Item = &str> {
        self.inner.called_flows.iter().map(|id| &**id)
    }

    /// The nodes and links, for diagrams (`flowctl graph`).
    pub fn graph(&self) -> FlowGraph {
        let inner = &*self.inner;
        let mut graph = FlowGraph { nodes: Vec::with_capacity(inner.nodes.len()), links: Vec::new() };
        for (i, node) in inner.nodes.iter().enumerate() {
            graph.nodes.push(GraphNode {
                id: node.id.clone(),
                kind: node.type_name,
                text: node.summary(inner),
                is_start: i as u32 == inner.start,
            });
            node.for_each_link(&mut |to, label| {
                graph.links.push(GraphLink {
                    from: node.id.clone(),
                    to: inner.node(to).id.clone(),
                    label: label.map(str::to_string),
                });
            });
        }
        graph
    }
}

impl fmt::Debug for CompiledFlow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledFlow")
            .field("id", &self.id())
            .field("nodes", &self.node_count())
            .field("warnings", &self.warnings().len())
            .finish()
    }
}

// ---------------------------------------------------------------------------------------
// The compiled node model (crate-private).

pub(crate) struct Node {
    pub(crate) id: NodeId,
    pub(crate) type_name: &'static str,
    pub(crate) kind: Kind,
    /// The default way on.
    pub(crate) next: Option<u32>,
}

pub(crate) enum Kind {
    Start {
        content: Option<Template>,
    },
    Message(MessageSpec),
    Question(Box<Question>),
    End {
        content: Option<Template>,
    },
    Condition {
        cond: Cond,
        yes: u32,
        no: u32,
    },
    Jump {
        target: u32,
    },
    Random {
        branches: Box<[(u64, u32)]>,
        total: u64,
    },
    SetVariable {
        var: Box<str>,
        value: SetValue,
    },
    Effect(Box<EffectNode>),
    Handoff {
        content: Option<Template>,
        queue: Option<Template>,
    },
    Delay {
        millis: u64,
    },
    WhatsappTemplate(Box<WaTemplate>),
    Interactive(Box<Interactive>),
    /// Sends a WhatsApp Flow and waits for its reply.
    WhatsappFlow(Box<whatsapp_flow::WhatsappFlow>),
    Analytics {
        event: Template,
        properties: JsonTemplate,
    },
    Datetime(Box<DatetimeNode>),
    CallFlow(Box<CallFlow>),
    /// Stands in for a node that failed to compile; never run (compile fails).
    Invalid,
}

pub(crate) enum MessageSpec {
    Text(Template),
    Media { kind: MediaKind, link: Template, caption: Option<Template>, filename: Option<Template> },
}

/// What waiting nodes (questions, interactive messages) share.
pub(crate) struct Wait {
    pub(crate) var: Box<str>,
    pub(crate) error: Option<Template>,
    pub(crate) max_retries: u32,
    pub(crate) invalid: Option<u32>,
    pub(crate) timeout: Option<Timeout>,
}

pub(crate) struct Timeout {
    pub(crate) millis: u64,
    pub(crate) target: Option<u32>,
}

pub(crate) struct Question {
    pub(crate) prompt: Option<Template>,
    pub(crate) validation: Validation,
    pub(crate) wait: Wait,
}

pub(crate) struct Interactive {
    pub(crate) header: Option<Template>,
    pub(crate) body: Template,
    pub(crate) footer: Option<Template>,
    /// `Some` for lists: the button label and the sections (title, row count).
    pub(crate) list: Option<ListSpec>,
    pub(crate) options: Box<[Opt]>,
    pub(crate) wait: Wait,
}

/// A list's button label and its sections (title, how many of the options are its rows).
pub(crate) type ListSpec = (Box<str>, Box<[(Option<Box<str>>, usize)]>);

pub(crate) struct Opt {
    pub(crate) id: Box<str>,
    pub(crate) title: Box<str>,
    pub(crate) description: Option<Box<str>>,
    pub(crate) target: Option<u32>,
}

pub(crate) enum SetValue {
    Json(JsonTemplate),
    Expr(Expr),
}

pub(crate) struct EffectNode {
    pub(crate) spec: EffectSpec,
    pub(crate) var: Option<Box<str>>,
    pub(crate) success: Option<u32>,
    pub(crate) failure: Option<u32>,
}

pub(crate) enum EffectSpec {
    ApiCall {
        method: Box<str>,
        url: Template,
        headers: Box<[(Box<str>, Template)]>,
        body: Option<JsonTemplate>,
        timeout_ms: Option<u64>,
    },
    AiPrompt {
        prompt: Template,
        system: Option<Template>,
        model: Option<Box<str>>,
    },
    DatabaseQuery {
        query: Template,
        params: JsonTemplate,
    },
    Script {
        language: Option<Box<str>>,
        code: Box<str>,
    },
    Action {
        action: Template,
        params: JsonTemplate,
    },
}

pub(crate) struct WaTemplate {
    pub(crate) name: Template,
    pub(crate) language: Box<str>,
    pub(crate) components: JsonTemplate,
}

pub(crate) struct DatetimeNode {
    pub(crate) var: Option<Box<str>>,
    pub(crate) offset_minutes: i32,
    pub(crate) hours: Option<BusinessHours>,
    pub(crate) open: Option<u32>,
    pub(crate) closed: Option<u32>,
}

/// A `call_flow` node: the flow it runs, the sub-flow's variables rendered from the
/// caller's scope, and the caller variables copied back from the sub-flow's on return.
pub(crate) struct CallFlow {
    pub(crate) flow: Box<str>,
    /// Sub-flow variable name, value template (rendered in the caller's scope).
    pub(crate) inputs: Box<[(Box<str>, JsonTemplate)]>,
    /// Caller variable name, sub-flow variable path.
    pub(crate) outputs: Box<[(Box<str>, VarPath)]>,
}

pub(crate) struct BusinessHours {
    pub(crate) days: [bool; 7],
    pub(crate) open: u32,
    pub(crate) close: u32,
}

impl BusinessHours {
    /// Whether minute `m` of weekday `d` is inside the hours (a close before the open
    /// means the hours run past midnight).
    pub(crate) fn is_open(&self, weekday: usize, minute: u32) -> bool {
        let day = |d: usize| self.days.get(d % 7).copied().unwrap_or(false);
        if self.open <= self.close {
            day(weekday) && minute >= self.open && minute < self.close
        } else {
            (day(weekday) && minute >= self.open) || (day(weekday + 6) && minute < self.close)
        }
    }
}

impl Node {
    /// Whether running this node can stop the turn (wait for input, an effect, time) or
    /// end the session.
    fn stops(&self) -> bool {
        matches!(
            self.kind,
            Kind::Question(_)
                | Kind::Interactive(_)
                | Kind::WhatsappFlow(_)
                | Kind::Delay { .. }
                | Kind::Handoff { .. }
                | Kind::End { .. }
                | Kind::Effect(_)
                // The called flow may wait; a cycle through a call is not a busy loop.
                | Kind::CallFlow(_)
                | Kind::Invalid
        )
    }

    /// Every way on, with its label.
    pub(crate) fn for_each_link(&self, f: &mut dyn FnMut(u32, Option<&str>)) {
        match &self.kind {
            Kind::Condition { yes, no, .. } => {
                f(*yes, Some("true"));
                f(*no, Some("false"));
            }
            Kind::Jump { target } => f(*target, None),
            Kind::Random { branches, total } => {
                for (w, t) in branches.iter() {
                    let pct = if *total == 0 { 0.0 } else { *w as f64 * 100.0 / *total as f64 };
                    f(*t, Some(&format!("{}%", (pct * 10.0).round() / 10.0)));
                }
            }
            Kind::Question(q) => wait_links(&q.wait, f),
            Kind::WhatsappFlow(w) => wait_links(&w.wait, f),
            Kind::Interactive(i) => {
                for o in i.options.iter() {
                    if let Some(t) = o.target {
                        f(t, Some(&o.id));
                    }
                }
                wait_links(&i.wait, f);
            }
            Kind::Effect(e) => {
                if let Some(t) = e.success {
                    f(t, Some("success"));
                }
                if let Some(t) = e.failure {
                    f(t, Some("failure"));
                }
            }
            Kind::Datetime(d) => {
                if let Some(t) = d.open {
                    f(t, Some("open"));
                }
                if let Some(t) = d.closed {
                    f(t, Some("closed"));
                }
            }
            _ => {}
        }
        if let Some(n) = self.next {
            f(n, None);
        }
    }

    fn summary(&self, flow: &Inner) -> String {
        let text = match &self.kind {
            Kind::Start { content } | Kind::End { content } => {
                content.as_ref().map(|t| t.to_string()).unwrap_or_default()
            }
            Kind::Message(MessageSpec::Text(t)) => t.to_string(),
            Kind::Message(MessageSpec::Media { kind, link, .. }) => format!("{} {link}", kind.as_str()),
            Kind::Question(q) => match &q.prompt {
                Some(p) => format!("{p} → {}", q.wait.var),
                None => format!("→ {}", q.wait.var),
            },
            Kind::Condition { cond, .. } => cond.to_string(),
            Kind::Jump { target } => format!("→ {}", flow.node(*target).id),
            Kind::Random { .. } => String::new(),
            Kind::SetVariable { var, value } => match value {
                SetValue::Expr(e) => format!("{var} = {e}"),
                SetValue::Json(JsonTemplate::Lit(v)) => format!("{var} = {v}"),
                SetValue::Json(JsonTemplate::Str(t)) => format!("{var} = {t}"),
                SetValue::Json(JsonTemplate::Var(p)) => format!("{var} = {{{{{}}}}}", p.as_str()),
                SetValue::Json(_) => format!("{var} = …"),
            },
            Kind::Effect(e) => match &e.spec {
                EffectSpec::ApiCall { method, url, .. } => format!("{method} {url}"),
                EffectSpec::AiPrompt { prompt, .. } => prompt.to_string(),
                EffectSpec::DatabaseQuery { query, .. } => query.to_string(),
                EffectSpec::Script { language, .. } => format!("script {}", language.as_deref().unwrap_or("")),
                EffectSpec::Action { action, .. } => action.to_string(),
            },
            Kind::Handoff { queue, .. } => queue.as_ref().map(|q| q.to_string()).unwrap_or_default(),
            Kind::Delay { millis } => format!("{}s", millis / 1000),
            Kind::WhatsappTemplate(t) => format!("{} ({})", t.name, t.language),
            Kind::Interactive(i) => i.body.to_string(),
            Kind::WhatsappFlow(w) => w.summary(),
            Kind::Analytics { event, .. } => event.to_string(),
            Kind::Datetime(d) => match &d.hours {
                Some(h) => {
                    format!("open {:02}:{:02}–{:02}:{:02}", h.open / 60, h.open % 60, h.close / 60, h.close % 60)
                }
                None => "date, time, weekday".into(),
            },
            Kind::CallFlow(call) => format!("→ flow {}", call.flow),
            Kind::Invalid => String::new(),
        };
        shorten(text, 80)
    }
}

fn wait_links(wait: &Wait, f: &mut dyn FnMut(u32, Option<&str>)) {
    if let Some(t) = wait.invalid {
        f(t, Some("invalid"));
    }
    if let Some(Timeout { target: Some(t), .. }) = &wait.timeout {
        f(*t, Some("timeout"));
    }
}

fn shorten(text: String, max: usize) -> String {
    let one_line = if text.contains('\n') { text.replace('\n', " ") } else { text };
    match one_line.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

// ---------------------------------------------------------------------------------------
// Compilation.

/// One outgoing edge while compiling (the port borrows the flow's text).
#[derive(Clone, Copy)]
struct Out<'f> {
    port: Option<&'f str>,
    target: u32,
    edge: usize,
    weight: Option<f64>,
}

struct Cx<'f> {
    flow: &'f Flow,
    diags: Vec<Diagnostic>,
    index: HashMap<NodeId, u32>,
    /// Variables some node writes or the flow declares (collected before nodes are built).
    writes: HashSet<&'f str>,
    used_edges: Vec<bool>,
}

/// Reads one node's `data` and its outgoing edges.
struct Nx<'a, 'f> {
    cx: &'a mut Cx<'f>,
    node: &'f FlowNode,
    outs: &'a [Out<'f>],
}

pub(crate) fn compile(flow: &Flow) -> Result<CompiledFlow, CompileError> {
    let n = flow.nodes.len();
    if n >= u32::MAX as usize || flow.edges.len() >= u32::MAX as usize {
        return Err(CompileError {
            diagnostics: vec![Diagnostic::error("too-many-nodes", "the flow has too many nodes")],
        });
    }
    let mut cx = Cx {
        flow,
        diags: Vec::new(),
        index: HashMap::with_capacity(n),
        writes: HashSet::new(),
        used_edges: vec![false; flow.edges.len()],
    };
    // One pass over the nodes while each is in cache: the id index, the canonical type and
    // the variables the node writes.
    let mut duplicate = vec![false; n];
    let mut ids: Vec<NodeId> = Vec::with_capacity(n);
    let mut types: Vec<Option<&'static str>> = Vec::with_capacity(n);
    cx.writes = declared_writes(flow);
    for (i, node) in flow.nodes.iter().enumerate() {
        let id = NodeId::from(node.id.as_str());
        match cx.index.entry(id.clone()) {
            Entry::Occupied(_) => {
                duplicate[i] = true;
                cx.diags.push(
                    Diagnostic::error("duplicate-node-id", format!("another node already has the id {:?}", node.id))
                        .at_node(node.id.as_str()),
                );
            }
            Entry::Vacant(slot) => {
                slot.insert(i as u32);
            }
        }
        ids.push(id);
        let type_name = canonical_type(&node.kind);
        types.push(type_name);
        collect_node_writes(node, type_name, &mut cx.writes);
    }

    let starts: Vec<u32> = (0..n).filter(|&i| !duplicate[i] && types[i] == Some("start")).map(|i| i as u32).collect();
    let start = match starts.as_slice() {
        [] => {
            cx.diags.push(Diagnostic::error("no-start-node", "the flow has no start node"));
            None
        }
        [one] => Some(*one),
        [first, rest @ ..] => {
            for s in rest {
                let id = &flow.nodes[*s as usize].id;
                cx.diags.push(
                    Diagnostic::error(
                        "multiple-start-nodes",
                        format!(
                            "the flow already starts at {:?}; a flow has one start node",
                            flow.nodes[*first as usize].id
                        ),
                    )
                    .at_node(id),
                );
            }
            Some(*first)
        }
    };

    // Edges, resolved once, into one flat array grouped by source node (in edge order
    // within a node): node i's edges are outs[offsets[i]..offsets[i + 1]].
    const NONE: u32 = u32::MAX;
    let mut sources: Vec<u32> = Vec::with_capacity(flow.edges.len());
    let mut targets: Vec<u32> = Vec::with_capacity(flow.edges.len());
    let mut offsets = vec![0u32; n + 1];
    for edge in &flow.edges {
        let source = cx.index.get(edge.source.as_str()).copied();
        let target = cx.index.get(edge.target.as_str()).copied();
        if source.is_none() {
            cx.diags.push(
                Diagnostic::error(
                    "edge-unknown-source",
                    format!("the edge leaves node {:?}, which does not exist", edge.source),
                )
                .at_edge(&edge.id),
            );
        }
        if target.is_none() {
            cx.diags.push(
                Diagnostic::error(
                    "edge-unknown-target",
                    format!("the edge enters node {:?}, which does not exist", edge.target),
                )
                .at_edge(&edge.id),
            );
        }
        if let (Some(s), Some(_)) = (source, target) {
            offsets[s as usize + 1] += 1;
        }
        sources.push(source.unwrap_or(NONE));
        targets.push(target.unwrap_or(NONE));
    }
    for i in 0..n {
        offsets[i + 1] += offsets[i];
    }
    let mut fill: Vec<u32> = offsets[..n].to_vec();
    let blank = Out { port: None, target: 0, edge: 0, weight: None };
    let mut outs: Vec<Out<'_>> = vec![blank; offsets[n] as usize];
    for (e, edge) in flow.edges.iter().enumerate() {
        let (s, t) = (sources[e], targets[e]);
        if s == NONE || t == NONE {
            continue;
        }
        let port = edge
            .source_handle
            .as_deref()
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .or_else(|| edge.label.as_deref().map(str::trim).filter(|p| !p.is_empty()));
        let weight = edge.weight.or_else(|| edge.data.get("weight").and_then(number_like));
        let slot = &mut fill[s as usize];
        // Every slot is filled: the counts and the fill walk the same resolved edges.
        if let Some(place) = outs.get_mut(*slot as usize) {
            *place = Out { port, target: t, edge: e, weight };
        }
        *slot += 1;
    }

    let mut nodes = Vec::with_capacity(n);
    for (i, (node, id)) in flow.nodes.iter().zip(ids).enumerate() {
        let (type_name, kind, next) = if duplicate[i] {
            ("invalid", Kind::Invalid, None)
        } else {
            let range = offsets[i] as usize..offsets[i + 1] as usize;
            let mut nx = Nx { cx: &mut cx, node, outs: outs.get(range).unwrap_or_default() };
            nx.build(types[i])
        };
        nodes.push(Node { id, type_name, kind, next });
    }

    let Cx { mut diags, index, used_edges, .. } = cx;
    if let Some(start) = start {
        warn_unreachable(&nodes, start, &duplicate, &mut diags);
    }
    warn_loops(&nodes, outs.len(), &mut diags);
    for (e, used) in used_edges.iter().enumerate() {
        if !used && sources[e] != NONE && targets[e] != NONE {
            let edge = &flow.edges[e];
            diags.push(
                Diagnostic::warning(
                    "unused-edge",
                    format!("the engine never follows this edge from {:?} to {:?}", edge.source, edge.target),
                )
                .at_edge(&edge.id)
                .at_node(&edge.source),
            );
        }
    }

    let mut called_flows: Vec<Box<str>> = nodes
        .iter()
        .filter_map(|node| match &node.kind {
            Kind::CallFlow(call) => Some(call.flow.clone()),
            _ => None,
        })
        .collect();
    called_flows.sort_unstable();
    called_flows.dedup();

    match start {
        Some(start) if !diags.iter().any(Diagnostic::is_error) => Ok(CompiledFlow {
            inner: Arc::new(Inner {
                id: flow.id.as_str().into(),
                name: flow.name.as_str().into(),
                nodes,
                index,
                start,
                defaults: flow.variables.clone(),
                warnings: diags,
                called_flows: called_flows.into(),
            }),
        }),
        _ => Err(CompileError { diagnostics: diags }),
    }
}

/// The canonical name of a node type, accepting a few spellings.
fn canonical_type(kind: &str) -> Option<&'static str> {
    const EXACT: [&str; 21] = [
        "start",
        "message",
        "question",
        "end",
        "condition",
        "jump",
        "random",
        "set_variable",
        "action",
        "handoff",
        "delay",
        "api_call",
        "ai_prompt",
        "database_query",
        "script",
        "whatsapp_template",
        "interactive_buttons",
        "interactive_list",
        "analytics",
        "datetime",
        "call_flow",
    ];
    if let Some(k) = EXACT.iter().find(|k| **k == kind) {
        return Some(k);
    }
    let k = kind.trim().to_ascii_lowercase().replace(['-', ' '], "_");
    Some(match k.as_str() {
        "start" => "start",
        "message" | "text" | "send_message" => "message",
        "question" | "input" => "question",
        "end" => "end",
        "condition" => "condition",
        "jump" | "goto" => "jump",
        "random" | "split" | "ab_test" => "random",
        "set_variable" | "setvariable" | "variable" => "set_variable",
        "action" => "action",
        "handoff" | "human_handoff" => "handoff",
        "delay" | "wait" => "delay",
        "api_call" | "apicall" | "http_request" | "webhook" => "api_call",
        "ai_prompt" | "aiprompt" | "ai" => "ai_prompt",
        "database_query" | "databasequery" | "db_query" => "database_query",
        "script" | "code" => "script",
        "whatsapp_template" | "template" => "whatsapp_template",
        "whatsapp_flow" | "whatsappflow" | "wa_flow" | "flow_message" => "whatsapp_flow",
        "interactive_buttons" | "buttons" => "interactive_buttons",
        "interactive_list" | "list" => "interactive_list",
        "analytics" | "track" => "analytics",
        "datetime" | "date_time" => "datetime",
        "call_flow" | "callflow" | "subflow" | "sub_flow" => "call_flow",
        _ => return None,
    })
}

fn number_like(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => crate::value::parse_number(s.trim().trim_end_matches('%')),
        _ => None,
    }
}

type Built = (&'static str, Kind, Option<u32>);

impl<'f> Nx<'_, 'f> {
    fn error(&mut self, code: &'static str, message: impl Into<String>) {
        let d = Diagnostic::error(code, message).at_node(&self.node.id);
        self.cx.diags.push(d);
    }

    fn warn(&mut self, code: &'static str, message: impl Into<String>) {
        let d = Diagnostic::warning(code, message).at_node(&self.node.id);
        self.cx.diags.push(d);
    }

    /// The first of `keys` present and not null.
    fn raw(&self, keys: &[&'static str]) -> Option<(&'static str, &'f Value)> {
        let data = &self.node.data;
        keys.iter().find_map(|k| data.get(*k).filter(|v| !v.is_null()).map(|v| (*k, v)))
    }

    fn text(&mut self, keys: &[&'static str]) -> Option<&'f str> {
        let (key, v) = self.raw(keys)?;
        match v {
            Value::String(s) => Some(s.as_str()),
            other => {
                self.error("invalid-field", format!("`{key}` must be text, found {other}"));
                None
            }
        }
    }

    /// A non-empty template from the first of `keys`; records the variables it reads.
    fn template(&mut self, keys: &[&'static str]) -> Option<Template> {
        let (key, v) = self.raw(keys)?;
        let t = match v {
            Value::String(s) => Template::parse(s),
            Value::Number(n) => Template::parse(&n.to_string()),
            other => {
                self.error("invalid-field", format!("`{key}` must be text, found {other}"));
                return None;
            }
        };
        if t.is_empty() {
            return None;
        }
        self.read_template(&t);
        Some(t)
    }

    fn read_template(&mut self, t: &Template) {
        for v in t.vars() {
            self.read(v.root());
        }
    }

    /// Notes a variable read: warns once per node about a variable nothing writes.
    fn read(&mut self, root: &str) {
        if root.is_empty() || self.cx.writes.contains(root) {
            return;
        }
        let node = self.node.id.as_str();
        let already = self
            .cx
            .diags
            .iter()
            .rev()
            .take_while(|d| d.node.as_deref() == Some(node))
            .any(|d| d.code == "undefined-variable" && d.message.starts_with(&format!("reads {{{{{root}}}}},")));
        if !already {
            self.warn(
                "undefined-variable",
                format!("reads {{{{{root}}}}}, which no node sets and the flow's `variables` do not declare"),
            );
        }
    }

    fn json_template(&mut self, keys: &[&'static str]) -> JsonTemplate {
        match self.raw(keys) {
            Some((_, v)) => {
                let t = JsonTemplate::parse(v);
                let mut roots: Vec<&str> = Vec::new();
                t.for_each_var(&mut |p| roots.push(p.root()));
                roots.iter().for_each(|r| self.read(r));
                t
            }
            None => JsonTemplate::Lit(Value::Null),
        }
    }

    fn uint(&mut self, keys: &[&'static str]) -> Option<u64> {
        let (key, v) = self.raw(keys)?;
        match number_like(v) {
            Some(f) if f >= 0.0 && f.is_finite() => Some(f.min(u64::MAX as f64) as u64),
            _ => {
                self.error("invalid-field", format!("`{key}` must be a whole number of zero or more, found {v}"));
                None
            }
        }
    }

    /// The variable a node writes (`variableName` and friends), trimmed, braces removed.
    fn var_name(&mut self, keys: &[&'static str]) -> Option<Box<str>> {
        let name = self.text(keys)?.trim();
        let name = name.strip_prefix("{{").and_then(|n| n.strip_suffix("}}")).unwrap_or(name).trim();
        if name.is_empty() {
            return None;
        }
        Some(name.into())
    }

    fn required_var(&mut self, what: &str) -> Option<Box<str>> {
        let v = self.var_name(&["variableName", "variable"]);
        if v.is_none() {
            self.error("missing-variable-name", format!("the {what} has no `variableName` to store the answer in"));
        }
        v
    }

    /// A node id named in `data` (`targetNodeId`, `trueNodeId`, …).
    fn node_ref(&mut self, keys: &[&'static str], code: &'static str) -> Option<Result<u32, ()>> {
        let (key, v) = self.raw(keys)?;
        let id = match v {
            Value::String(s) if s.trim().is_empty() => return None,
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => {
                self.error("invalid-field", format!("`{key}` must be a node id, found {other}"));
                return Some(Err(()));
            }
        };
        match self.cx.index.get(id.as_str()) {
            Some(i) => Some(Ok(*i)),
            None => {
                self.error(code, format!("`{key}` names node {id:?}, which does not exist"));
                Some(Err(()))
            }
        }
    }

    /// The first edge leaving by one of the named ports; marks it used.
    fn port(&mut self, names: &[&str]) -> Option<u32> {
        let out = self.outs.iter().find(|o| o.port.is_some_and(|p| names.iter().any(|n| p.eq_ignore_ascii_case(n))))?;
        self.cx.used_edges[out.edge] = true;
        Some(out.target)
    }

    /// The first edge without a port, or with a port not in `known`; marks it used.
    fn default_edge(&mut self, known: &[&str]) -> Option<u32> {
        let out = self.outs.iter().find(|o| match o.port {
            None => true,
            Some(p) => !known.iter().any(|k| p.eq_ignore_ascii_case(k)),
        })?;
        self.cx.used_edges[out.edge] = true;
        Some(out.target)
    }

    fn build(&mut self, type_name: Option<&'static str>) -> Built {
        let Some(type_name) = type_name else {
            let kind = self.node.kind.clone();
            self.error("unknown-node-type", format!("unknown node type {kind:?}"));
            return ("unknown", Kind::Invalid, None);
        };
        let (kind, next) = match type_name {
            "start" => (Kind::Start { content: self.template(&["content", "message"]) }, self.default_edge(&[])),
            "message" => self.message(),
            "question" => self.question(),
            "end" => (Kind::End { content: self.template(&["content", "message"]) }, None),
            "condition" => (self.condition(), None),
            "jump" => self.jump(),
            "random" => (self.random(), None),
            "set_variable" => (self.set_variable(), self.default_edge(&[])),
            "handoff" => (
                Kind::Handoff {
                    content: self.template(&["content", "message"]),
                    queue: self.template(&["queue", "department", "team", "agent"]),
                },
                None,
            ),
            "delay" => (self.delay(), self.default_edge(&[])),
            "whatsapp_template" => (self.whatsapp_template(), self.default_edge(&[])),
            "interactive_buttons" | "interactive_list" => self.interactive(type_name == "interactive_list"),
            "whatsapp_flow" => self.whatsapp_flow(),
            "analytics" => (self.analytics(), self.default_edge(&[])),
            "datetime" => self.datetime(),
            "call_flow" => self.call_flow(),
            _ => self.effect(type_name),
        };
        (type_name, kind, next)
    }

    fn message(&mut self) -> (Kind, Option<u32>) {
        let content = self.template(&["content", "message", "text"]);
        let link = self.template(&["mediaUrl", "imageUrl", "url", "link"]);
        let spec = match link {
            Some(link) => {
                let kind = match self.text(&["mediaType", "media"]).map(str::to_ascii_lowercase).as_deref() {
                    None | Some("image") => MediaKind::Image,
                    Some("video") => MediaKind::Video,
                    Some("audio") => MediaKind::Audio,
                    Some("document" | "file") => MediaKind::Document,
                    Some("sticker") => MediaKind::Sticker,
                    Some(other) => {
                        let other = other.to_string();
                        self.error("invalid-field", format!("unknown `mediaType` {other:?}"));
                        MediaKind::Image
                    }
                };
                let filename = self.template(&["filename", "fileName"]);
                MessageSpec::Media { kind, link, caption: content, filename }
            }
            None => match content {
                Some(t) => MessageSpec::Text(t),
                None => {
                    self.error("missing-content", "the message node has no `content`");
                    MessageSpec::Text(Template::parse(""))
                }
            },
        };
        (Kind::Message(spec), self.default_edge(&[]))
    }

    fn wait(&mut self, var: Box<str>) -> Wait {
        let error = self.template(&["errorMessage", "invalidMessage"]);
        let max_retries =
            self.uint(&["maxRetries", "retries"]).unwrap_or(DEFAULT_MAX_RETRIES).min(u32::MAX as u64) as u32;
        let invalid = self.port(&["invalid"]);
        let timeout = self
            .uint(&["timeoutSeconds", "timeout"])
            .filter(|s| *s > 0)
            .map(|secs| Timeout { millis: secs.saturating_mul(1000), target: self.port(&["timeout"]) });
        Wait { var, error, max_retries, invalid, timeout }
    }

    fn question(&mut self) -> (Kind, Option<u32>) {
        let prompt = self.template(&["content", "question", "message", "text"]);
        let var = self.required_var("question").unwrap_or_default();
        let kind = self.text(&["validationType", "validation", "inputType"]).map(|s| s.trim().to_ascii_lowercase());
        let pattern = self.text(&["pattern", "regex"]);
        let validation = match (kind.as_deref(), pattern) {
            (None | Some("" | "text" | "string" | "any" | "none"), None) => Validation::Text,
            (None | Some("" | "regex" | "pattern" | "custom" | "text"), Some(p)) => {
                match RegexBuilder::new(p).size_limit(10 << 20).build() {
                    Ok(re) => Validation::Regex(re),
                    Err(e) => {
                        self.error("invalid-regex", format!("invalid regular expression {p:?}: {e}"));
                        Validation::Text
                    }
                }
            }
            (Some("regex" | "pattern" | "custom"), None) => {
                self.error("missing-pattern", "the question validates by regex but has no `pattern`");
                Validation::Text
            }
            (Some("number" | "numeric" | "integer" | "float"), _) => Validation::Number,
            (Some("email" | "e-mail" | "mail"), _) => Validation::Email,
            (Some("phone" | "tel" | "telephone" | "phone_number"), _) => Validation::Phone,
            (Some("options" | "option" | "choice" | "choices"), _) => self.question_options(),
            (Some("location" | "localização" | "localizacao"), _) => Validation::Location,
            (Some("media" | "file" | "attachment"), _) => self.question_media_types(),
            (Some("contact" | "contacts" | "contato"), _) => Validation::Contact,
            (Some("order" | "cart" | "pedido"), _) => Validation::Order,
            (Some(other), _) => {
                let other = other.to_string();
                self.error("unknown-validation-type", format!("unknown `validationType` {other:?}"));
                Validation::Text
            }
        };
        let wait = self.wait(var);
        let q = Question { prompt, validation, wait };
        let next = self.default_edge(&["invalid", "timeout"]);
        (Kind::Question(Box::new(q)), next)
    }

    /// `mediaTypes` of a media question: a list (or one name) of media kinds.
    fn question_media_types(&mut self) -> Validation {
        let names: Vec<&Value> = match self.raw(&["mediaTypes", "mediaType", "accept"]) {
            None => Vec::new(),
            Some((_, Value::Array(items))) => items.iter().collect(),
            Some((_, one)) => vec![one],
        };
        let mut kinds = Vec::new();
        for name in names {
            match name.as_str().and_then(crate::validate::parse_media_kind) {
                Some(kind) if !kinds.contains(&kind) => kinds.push(kind),
                Some(_) => {}
                None => self.error(
                    "unknown-media-type",
                    format!("unknown media type {name} in `mediaTypes` (image, video, audio, document, sticker)"),
                ),
            }
        }
        Validation::Media(kinds.into())
    }

    fn question_options(&mut self) -> Validation {
        let items = match self.raw(&["options", "choices"]) {
            Some((_, Value::Array(items))) => items.as_slice(),
            _ => &[],
        };
        let mut options = Vec::new();
        for item in items {
            let option = match item {
                Value::String(s) => Some(QuestionOption { value: s.as_str().into(), label: s.as_str().into() }),
                Value::Object(o) => {
                    let get = |keys: &[&str]| keys.iter().find_map(|k| o.get(*k).and_then(Value::as_str));
                    let label = get(&["title", "label", "text", "value", "id"]);
                    let value = get(&["value", "id", "title", "label"]);
                    value.zip(label).map(|(v, l)| QuestionOption { value: v.into(), label: l.into() })
                }
                _ => None,
            };
            match option {
                Some(o) => options.push(o),
                None => self.error(
                    "invalid-field",
                    format!("an option must be text or {{\"value\", \"label\"}}, found {item}"),
                ),
            }
        }
        if options.is_empty() {
            self.error("no-options", "the question validates by `options` but lists none");
        }
        Validation::Options(options.into())
    }

    fn condition(&mut self) -> Kind {
        let data = &self.node.data;
        let spec: Option<std::borrow::Cow<'_, Value>> = if let Some(c) = data.get("condition").filter(|v| !v.is_null())
        {
            Some(std::borrow::Cow::Borrowed(c))
        } else if let Some(Value::Array(items)) = data.get("conditions") {
            let logic = ["logic", "logicOperator", "logicalOperator", "match"]
                .iter()
                .find_map(|k| data.get(*k).and_then(Value::as_str))
                .unwrap_or("and")
                .to_ascii_lowercase();
            let key = if matches!(logic.as_str(), "or" | "any") { "any" } else { "all" };
            let mut group = Map::new();
            group.insert(key.to_string(), Value::Array(items.clone()));
            Some(std::borrow::Cow::Owned(Value::Object(group)))
        } else if data.contains_key("operator") || data.contains_key("variableName") {
            Some(std::borrow::Cow::Owned(Value::Object(data.clone())))
        } else {
            None
        };
        let cond = match spec.as_deref().map(Cond::parse) {
            Some(Ok(c)) => Some(c),
            Some(Err((code, message))) => {
                self.error(code, message);
                None
            }
            None => {
                self.error("invalid-condition", "the condition node has no `condition`");
                None
            }
        };
        if let Some(c) = &cond {
            let mut roots: Vec<&str> = Vec::new();
            c.for_each_var(&mut |p| roots.push(p.root()));
            roots.iter().for_each(|r| self.read(r));
        }
        let yes = match self.node_ref(&["trueNodeId", "trueTarget"], "branch-target-missing") {
            Some(r) => r.ok(),
            None => self.port(&["true", "yes", "sim"]),
        };
        let no = match self.node_ref(&["falseNodeId", "falseTarget"], "branch-target-missing") {
            Some(r) => r.ok(),
            None => self.port(&["false", "no", "não", "nao", "else"]),
        };
        let has_true = yes.is_some() || self.node.data.get("trueNodeId").is_some_and(|v| !v.is_null());
        let has_false = no.is_some() || self.node.data.get("falseNodeId").is_some_and(|v| !v.is_null());
        if !has_true || !has_false {
            let missing = match (has_true, has_false) {
                (false, false) => "a true or a false branch",
                (false, true) => "a true branch",
                _ => "a false branch",
            };
            self.error(
                "condition-missing-branch",
                format!("the condition has no {missing} (`trueNodeId`/`falseNodeId` or an edge labelled \"true\"/\"false\")"),
            );
        }
        match (cond, yes, no) {
            (Some(cond), Some(yes), Some(no)) => Kind::Condition { cond, yes, no },
            _ => Kind::Invalid,
        }
    }

    fn jump(&mut self) -> (Kind, Option<u32>) {
        match self.node_ref(&["targetNodeId", "target", "targetNode", "nodeId"], "jump-target-missing") {
            Some(Ok(target)) => (Kind::Jump { target }, None),
            Some(Err(())) => (Kind::Invalid, None),
            None => match self.default_edge(&[]) {
                Some(target) => (Kind::Jump { target }, None),
                None => {
                    self.error("jump-target-missing", "the jump has no `targetNodeId` and no outgoing edge");
                    (Kind::Invalid, None)
                }
            },
        }
    }

    fn random(&mut self) -> Kind {
        let mut branches = Vec::new();
        let mut total: u64 = 0;
        for out in self.outs {
            let w = out.weight.or_else(|| out.port.and_then(|p| number_like(&Value::String(p.into()))));
            let w = match w {
                Some(w) if w.is_finite() && w >= 0.0 => (w * 1000.0).round().min(1e15) as u64,
                Some(_) => {
                    self.cx.diags.push(
                        Diagnostic::error("invalid-weight", "a random branch's weight must be zero or more")
                            .at_node(&self.node.id)
                            .at_edge(&self.cx.flow.edges[out.edge].id),
                    );
                    0
                }
                None => 1000,
            };
            self.cx.used_edges[out.edge] = true;
            total = total.saturating_add(w);
            branches.push((w, out.target));
        }
        if branches.is_empty() || total == 0 {
            self.error("random-without-branches", "the random node has no outgoing edge with a weight above zero");
            return Kind::Invalid;
        }
        Kind::Random { branches: branches.into(), total }
    }

    fn set_variable(&mut self) -> Kind {
        let Some(var) = self.required_var("set_variable node") else { return Kind::Invalid };
        let is_expr = self.text(&["valueType", "type", "mode"]).is_some_and(|t| t.eq_ignore_ascii_case("expression"));
        let expr_text = match self.text(&["expression"]) {
            Some(e) => Some(e),
            None if is_expr => self.text(&["value"]),
            None => None,
        };
        let value = match expr_text {
            Some(text) => match Expr::parse(text) {
                Ok(e) => {
                    let mut roots: Vec<&str> = Vec::new();
                    e.for_each_var(&mut |p| roots.push(p.root()));
                    roots.iter().for_each(|r| self.read(r));
                    SetValue::Expr(e)
                }
                Err(message) => {
                    self.error("invalid-expression", format!("invalid expression {text:?}: {message}"));
                    return Kind::Invalid;
                }
            },
            None => SetValue::Json(self.json_template(&["value"])),
        };
        Kind::SetVariable { var, value }
    }

    fn delay(&mut self) -> Kind {
        let seconds = self.uint(&["seconds", "delaySeconds", "delay", "duration"]).map(|s| s.saturating_mul(1000));
        let millis = seconds
            .or_else(|| self.uint(&["milliseconds", "delayMs"]))
            .or_else(|| self.uint(&["minutes"]).map(|m| m.saturating_mul(60_000)))
            .or_else(|| self.uint(&["hours"]).map(|h| h.saturating_mul(3_600_000)));
        match millis {
            Some(millis) => Kind::Delay { millis },
            None => {
                self.error(
                    "missing-field",
                    "the delay node has no duration (`seconds`, `minutes`, `hours` or `milliseconds`)",
                );
                Kind::Invalid
            }
        }
    }

    fn whatsapp_template(&mut self) -> Kind {
        let Some(name) = self.template(&["templateName", "name", "template"]) else {
            self.error("missing-field", "the whatsapp_template node has no `templateName`");
            return Kind::Invalid;
        };
        let language = self.text(&["language", "languageCode"]).unwrap_or("pt_BR").into();
        let components = self.json_template(&["components", "parameters"]);
        Kind::WhatsappTemplate(Box::new(WaTemplate { name, language, components }))
    }

    fn interactive(&mut self, list: bool) -> (Kind, Option<u32>) {
        let what = if list { "interactive_list" } else { "interactive_buttons" };
        let var = self.required_var(what).unwrap_or_default();
        let body = match self.template(&["content", "body", "message", "text"]) {
            Some(b) => b,
            None => {
                self.error("missing-content", format!("the {what} node has no `content` (WhatsApp requires a body)"));
                Template::parse("")
            }
        };
        let header = self.template(&["header"]);
        let footer = self.template(&["footer"]);
        let mut options: Vec<Opt> = Vec::new();
        let mut list_spec = None;
        if list {
            let button: Box<str> = self.text(&["button", "buttonText", "buttonLabel"]).unwrap_or("Ver opções").into();
            if button.chars().count() > MAX_BUTTON_TITLE {
                self.error(
                    "button-title-too-long",
                    format!("the list button {button:?} is longer than {MAX_BUTTON_TITLE} characters"),
                );
            }
            let mut sections = Vec::new();
            match self.raw(&["sections"]) {
                Some((_, Value::Array(items))) => {
                    for s in items {
                        let title = s.get("title").and_then(Value::as_str).map(Box::from);
                        let rows = s.get("rows").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
                        let before = options.len();
                        self.options(rows, true, &mut options);
                        sections.push((title, options.len() - before));
                    }
                }
                _ => {
                    let rows = match self.raw(&["rows", "options", "items"]) {
                        Some((_, Value::Array(items))) => items.as_slice(),
                        _ => &[],
                    };
                    self.options(rows, true, &mut options);
                    sections.push((None, options.len()));
                }
            }
            if options.len() > MAX_LIST_ROWS {
                self.error(
                    "too-many-list-rows",
                    format!("the list has {} rows; WhatsApp allows {MAX_LIST_ROWS} in total", options.len()),
                );
            }
            list_spec = Some((button, sections.into_boxed_slice()));
        } else {
            let items = match self.raw(&["buttons", "options"]) {
                Some((_, Value::Array(items))) => items.as_slice(),
                _ => &[],
            };
            self.options(items, false, &mut options);
            if options.len() > MAX_BUTTONS {
                self.error(
                    "too-many-buttons",
                    format!("the node has {} buttons; WhatsApp allows {MAX_BUTTONS}", options.len()),
                );
            }
        }
        if options.is_empty() {
            self.error("no-options", format!("the {what} node has no options"));
        }
        let mut seen = HashSet::new();
        for o in &options {
            if !seen.insert(&*o.id) {
                let id = o.id.clone();
                self.error("duplicate-option-id", format!("two options have the id {id:?}"));
            }
        }
        let wait = self.wait(var);
        let mut known: Vec<&str> = vec!["invalid", "timeout"];
        let ids: Vec<Box<str>> = options.iter().map(|o| o.id.clone()).collect();
        known.extend(ids.iter().map(|s| &**s));
        for o in options.iter_mut() {
            o.target = self.port(&[&o.id]);
        }
        let next = self.default_edge(&known);
        if next.is_none() {
            let unrouted: Vec<&str> = options.iter().filter(|o| o.target.is_none()).map(|o| &*o.id).collect();
            if !unrouted.is_empty() {
                let list = unrouted.join(", ");
                self.warn(
                    "unrouted-option",
                    format!("no edge leaves for option(s) {list}; choosing one ends the session"),
                );
            }
        }
        let node = Interactive { header, body, footer, list: list_spec, options: options.into(), wait };
        (Kind::Interactive(Box::new(node)), next)
    }

    fn options(&mut self, items: &[Value], row: bool, out: &mut Vec<Opt>) {
        let (limit, title_code) =
            if row { (MAX_ROW_TITLE, "row-title-too-long") } else { (MAX_BUTTON_TITLE, "button-title-too-long") };
        for item in items {
            let get = |keys: &[&str]| {
                keys.iter().find_map(|k| item.get(*k)).and_then(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
            };
            let title = match item {
                Value::String(s) => Some(s.clone()),
                _ => get(&["title", "text", "label"]),
            };
            let Some(title) = title.filter(|t| !t.trim().is_empty()) else {
                self.error("invalid-field", format!("an option has no `title`: {item}"));
                continue;
            };
            let id = get(&["id", "value"]).filter(|i| !i.trim().is_empty()).unwrap_or_else(|| title.clone());
            if title.chars().count() > limit {
                let what = if row { "row" } else { "button" };
                self.error(title_code, format!("the {what} title {title:?} is longer than {limit} characters"));
            }
            let description = if row { get(&["description"]) } else { None };
            if let Some(d) = &description {
                if d.chars().count() > MAX_ROW_DESCRIPTION {
                    self.error(
                        "row-description-too-long",
                        format!("the description of row {id:?} is longer than {MAX_ROW_DESCRIPTION} characters"),
                    );
                }
            }
            out.push(Opt { id: id.into(), title: title.into(), description: description.map(Box::from), target: None });
        }
    }

    fn analytics(&mut self) -> Kind {
        let Some(event) = self.template(&["event", "eventName", "name"]) else {
            self.error("missing-field", "the analytics node has no `event`");
            return Kind::Invalid;
        };
        let properties = self.json_template(&["properties", "params", "data"]);
        Kind::Analytics { event, properties }
    }

    fn datetime(&mut self) -> (Kind, Option<u32>) {
        let var = self.var_name(&["variableName", "variable"]);
        let data = &self.node.data;
        let hours_spec = data.get("businessHours").filter(|v| v.is_object());
        let offset_value = hours_spec
            .and_then(|h| h.get("utcOffset").or_else(|| h.get("timezoneOffset")))
            .or_else(|| ["utcOffset", "timezoneOffset", "offset"].iter().find_map(|k| data.get(*k)));
        let offset_minutes = match offset_value {
            None | Some(Value::Null) => 0,
            Some(v) => match parse_offset(v) {
                Some(m) => m,
                None => {
                    self.error("invalid-field", format!("`utcOffset` must look like \"-03:00\" or -3, found {v}"));
                    0
                }
            },
        };
        let hours = hours_spec.and_then(|h| {
            let open = h.get("open").or_else(|| h.get("start")).and_then(Value::as_str).and_then(parse_hhmm);
            let close = h.get("close").or_else(|| h.get("end")).and_then(Value::as_str).and_then(parse_hhmm);
            let mut days = [false; 7];
            match h.get("days").or_else(|| h.get("weekdays")) {
                None | Some(Value::Null) => days[..5].iter_mut().for_each(|d| *d = true),
                Some(Value::Array(items)) => {
                    for d in items {
                        match parse_weekday(d) {
                            Some(i) => days[i] = true,
                            None => self.error("invalid-field", format!("unknown weekday {d} in `businessHours.days`")),
                        }
                    }
                }
                Some(other) => {
                    self.error("invalid-field", format!("`businessHours.days` must be a list, found {other}"))
                }
            }
            match (open, close) {
                (Some(open), Some(close)) => Some(BusinessHours { days, open, close }),
                _ => {
                    self.error("invalid-field", "`businessHours` needs `open` and `close` as \"HH:MM\"");
                    None
                }
            }
        });
        let (open, closed) = if hours.is_some() {
            (self.port(&["open", "true"]), self.port(&["closed", "false"]))
        } else {
            (None, None)
        };
        let next = self.default_edge(&["open", "closed", "true", "false"]);
        (Kind::Datetime(Box::new(DatetimeNode { var, offset_minutes, hours, open, closed })), next)
    }

    fn call_flow(&mut self) -> (Kind, Option<u32>) {
        let flow = match self.raw(&["flowId", "flow", "subflowId"]) {
            Some((_, Value::String(s))) if !s.trim().is_empty() => s.trim().to_string(),
            Some((_, Value::Number(n))) => n.to_string(),
            Some((key, other)) => {
                self.error("invalid-field", format!("`{key}` must be a flow id, found {other}"));
                return (Kind::Invalid, None);
            }
            None => {
                self.error("missing-field", "the call_flow node has no `flowId`");
                return (Kind::Invalid, None);
            }
        };
        let mut inputs = Vec::new();
        match self.raw(&["inputs"]) {
            Some((_, Value::Object(map))) => {
                for (name, value) in map {
                    let t = JsonTemplate::parse(value);
                    let mut roots: Vec<&str> = Vec::new();
                    t.for_each_var(&mut |p| roots.push(p.root()));
                    roots.iter().for_each(|r| self.read(r));
                    inputs.push((name.trim().into(), t));
                }
            }
            Some((_, other)) => self.error("invalid-field", format!("`inputs` must be an object, found {other}")),
            None => {}
        }
        let mut outputs = Vec::new();
        match self.raw(&["outputs"]) {
            Some((_, Value::Object(map))) => {
                for (name, value) in map {
                    match value.as_str().map(str::trim).filter(|v| !v.is_empty()) {
                        Some(from) => outputs.push((name.trim().into(), VarPath::parse(from))),
                        None => self.error(
                            "invalid-field",
                            format!("output {name:?} must name a variable of the called flow, found {value}"),
                        ),
                    }
                }
            }
            Some((_, other)) => self.error("invalid-field", format!("`outputs` must be an object, found {other}")),
            None => {}
        }
        let next = self.port(&["return"]).or_else(|| self.default_edge(&["return"]));
        let call = CallFlow { flow: flow.into(), inputs: inputs.into(), outputs: outputs.into() };
        (Kind::CallFlow(Box::new(call)), next)
    }

    fn effect(&mut self, type_name: &'static str) -> (Kind, Option<u32>) {
        let spec = match type_name {
            "api_call" => {
                let Some(url) = self.template(&["url", "endpoint"]) else {
                    self.error("missing-field", "the api_call node has no `url`");
                    return (Kind::Invalid, None);
                };
                let method = self.text(&["method"]).unwrap_or("GET").trim().to_ascii_uppercase().into();
                let mut headers = Vec::new();
                match self.raw(&["headers"]) {
                    Some((_, Value::Object(map))) => {
                        for (k, v) in map {
                            headers.push((k.as_str().into(), Template::parse(&crate::value::value_text(v))));
                        }
                    }
                    Some((_, Value::Array(items))) => {
                        for item in items {
                            let k = item.get("key").or_else(|| item.get("name")).and_then(Value::as_str);
                            let v = item.get("value").map(crate::value::value_text);
                            match (k, v) {
                                (Some(k), Some(v)) => headers.push((k.into(), Template::parse(&v))),
                                _ => self.error(
                                    "invalid-field",
                                    format!("a header must be {{\"key\", \"value\"}}, found {item}"),
                                ),
                            }
                        }
                    }
                    Some((_, other)) => {
                        self.error("invalid-field", format!("`headers` must be an object, found {other}"))
                    }
                    None => {}
                }
                let header_templates: Vec<Template> = headers.iter().map(|(_, t)| t.clone()).collect();
                header_templates.iter().for_each(|t| self.read_template(t));
                let body = self.raw(&["body", "payload"]).map(|_| self.json_template(&["body", "payload"]));
                let timeout_ms = self.uint(&["timeoutMs", "timeout"]);
                EffectSpec::ApiCall { method, url, headers: headers.into(), body, timeout_ms }
            }
            "ai_prompt" => {
                let Some(prompt) = self.template(&["prompt", "content", "userPrompt"]) else {
                    self.error("missing-field", "the ai_prompt node has no `prompt`");
                    return (Kind::Invalid, None);
                };
                let system = self.template(&["systemPrompt", "system"]);
                let model = self.text(&["model"]).map(Box::from);
                EffectSpec::AiPrompt { prompt, system, model }
            }
            "database_query" => {
                let Some(query) = self.template(&["query", "sql"]) else {
                    self.error("missing-field", "the database_query node has no `query`");
                    return (Kind::Invalid, None);
                };
                let params = self.json_template(&["params", "parameters"]);
                EffectSpec::DatabaseQuery { query, params }
            }
            "script" => {
                let Some(code) = self.text(&["code", "script", "source"]) else {
                    self.error("missing-field", "the script node has no `code`");
                    return (Kind::Invalid, None);
                };
                let language = self.text(&["language", "lang"]).map(Box::from);
                EffectSpec::Script { language, code: code.into() }
            }
            _ => {
                let Some(action) = self.template(&["action", "actionType", "actionName", "name"]) else {
                    self.error("missing-field", "the action node has no `action`");
                    return (Kind::Invalid, None);
                };
                let params = self.json_template(&["params", "parameters"]);
                EffectSpec::Action { action, params }
            }
        };
        let var = self.var_name(&["responseVariable", "resultVariable", "outputVariable", "variableName"]);
        let success = self.port(&["success", "ok"]);
        let failure = self.port(&["failure", "error", "fail"]);
        let next =
            if success.is_none() { self.default_edge(&["success", "ok", "failure", "error", "fail"]) } else { None };
        (Kind::Effect(Box::new(EffectNode { spec, var, success: success.or(next), failure })), None)
    }
}

fn warn_unreachable(nodes: &[Node], start: u32, duplicate: &[bool], diags: &mut Vec<Diagnostic>) {
    let mut seen = vec![false; nodes.len()];
    let mut queue = VecDeque::from([start]);
    seen[start as usize] = true;
    while let Some(i) = queue.pop_front() {
        nodes[i as usize].for_each_link(&mut |t, _| {
            if !seen[t as usize] {
                seen[t as usize] = true;
                queue.push_back(t);
            }
        });
    }
    for (i, node) in nodes.iter().enumerate() {
        if !seen[i] && !duplicate[i] {
            diags.push(
                Diagnostic::warning("unreachable-node", "no path from the start node reaches this node")
                    .at_node(node.id.as_str()),
            );
        }
    }
}

/// Tarjan's strongly connected components, iteratively, over the links that leave
/// nodes which never stop the turn.
fn warn_loops(nodes: &[Node], links: usize, diags: &mut Vec<Diagnostic>) {
    let n = nodes.len();
    let mut offsets = Vec::with_capacity(n + 1);
    let mut adj: Vec<u32> = Vec::with_capacity(links + n);
    for node in nodes {
        offsets.push(adj.len());
        if !node.stops() {
            node.for_each_link(&mut |t, _| adj.push(t));
        }
    }
    offsets.push(adj.len());
    const UNSEEN: u32 = u32::MAX;
    let mut index = vec![UNSEEN; n];
    let mut low = vec![0u32; n];
    let mut on_stack = vec![false; n];
    let mut stack: Vec<u32> = Vec::new();
    let mut call: Vec<(u32, usize)> = Vec::new();
    let mut counter = 0u32;
    let mut loops: Vec<Vec<u32>> = Vec::new();
    let mut comp: Vec<u32> = Vec::new();
    for root in 0..n as u32 {
        if index[root as usize] != UNSEEN {
            continue;
        }
        index[root as usize] = counter;
        low[root as usize] = counter;
        counter += 1;
        stack.push(root);
        on_stack[root as usize] = true;
        call.push((root, offsets[root as usize]));
        while let Some(&mut (v, ref mut pos)) = call.last_mut() {
            let vi = v as usize;
            if *pos < offsets[vi + 1] {
                let w = adj[*pos];
                *pos += 1;
                let wi = w as usize;
                if index[wi] == UNSEEN {
                    index[wi] = counter;
                    low[wi] = counter;
                    counter += 1;
                    stack.push(w);
                    on_stack[wi] = true;
                    call.push((w, offsets[wi]));
                } else if on_stack[wi] {
                    low[vi] = low[vi].min(index[wi]);
                }
            } else {
                call.pop();
                if let Some(&(u, _)) = call.last() {
                    low[u as usize] = low[u as usize].min(low[vi]);
                }
                if low[vi] == index[vi] {
                    comp.clear();
                    while let Some(w) = stack.pop() {
                        on_stack[w as usize] = false;
                        comp.push(w);
                        if w == v {
                            break;
                        }
                    }
                    let self_loop = adj[offsets[vi]..offsets[vi + 1]].contains(&v);
                    if comp.len() > 1 || self_loop {
                        comp.sort_unstable();
                        loops.push(comp.clone());
                    }
                }
            }
        }
    }
    loops.sort();
    for comp in loops {
        let names: Vec<&str> = comp.iter().map(|i| nodes[*i as usize].id.as_str()).collect();
        diags.push(
            Diagnostic::warning(
                "loop-without-input",
                format!(
                    "these nodes form a cycle that never waits for input: {} (the step budget will end the session)",
                    names.join(" → ")
                ),
            )
            .at_node(names.first().copied().unwrap_or_default()),
        );
    }
}

/// The variables every flow has: the declared ones and the effect-failure built-in.
/// With [`collect_node_writes`] over every node, this is what reads are checked against.
fn declared_writes(flow: &Flow) -> HashSet<&str> {
    let mut writes: HashSet<&str> = flow.variables.keys().map(String::as_str).collect();
    writes.insert("last_error");
    writes
}

/// Every variable a node writes (`variableName`, `responseVariable`, …, normalised as
/// [`Nx::var_name`] does) and the `datetime` built-ins.
fn collect_node_writes<'f>(node: &'f FlowNode, type_name: Option<&'static str>, writes: &mut HashSet<&'f str>) {
    if node.data.is_empty() {
        return;
    }
    for key in ["variableName", "variable", "responseVariable", "resultVariable", "outputVariable"] {
        let Some(name) = node.data.get(key).and_then(Value::as_str).map(str::trim) else { continue };
        let name = name.strip_prefix("{{").and_then(|n| n.strip_suffix("}}")).unwrap_or(name).trim();
        writes.insert(name);
        // A dotted name writes a flat variable; its root counts as written too.
        if let Some((root, _)) = name.split_once('.') {
            writes.insert(root);
        }
    }
    if type_name == Some("datetime") {
        writes.extend(["date", "time", "weekday"]);
    }
    if type_name == Some("call_flow") {
        if let Some(Value::Object(outputs)) = node.data.get("outputs") {
            writes.extend(outputs.keys().map(|k| k.trim()));
        }
    }
}
