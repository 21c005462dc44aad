//! Running a `.chat` file against a compiled flow: each conversation on a fresh session,
//! every bot output compared with the listed lines, coverage recorded on the way.

use std::collections::VecDeque;

use flowcore::{
    CompiledFlow, EffectId, EffectOutcome, FlowSet, Input, Output, Session, SessionError, SessionOptions,
    SessionStatus, Timestamp,
};

use super::clock::{awaited_effect, feed_skipping_delays, VirtualClock};
use super::coverage::Coverage;
use super::inbound::Inbound;
use super::parse::{ChatConversation, ChatFile, StepKind};
use super::render::{describe, escape};

/// The failure an effect gets when the test gives no `effect_result` line for it.
const NO_RESULT: &str = "flowctl test: no effect_result line was given";

/// How many effects in a row one line may fail before it is read, bounding a flow whose
/// failure edges lead from effect to effect in a loop.
const MAX_UNANSWERED_EFFECTS: usize = 100;

/// Runs `.chat` files against one flow and adds up their coverage.
///
/// ```
/// use flowcore::Flow;
/// use flowcore_examples::transcript::{parse_chat, Runner};
/// let flow = Flow::from_json(r#"{"id":"f","nodes":[{"id":"s","type":"start"},{"id":"bye","type":"end","data":{"content":"Tchau!"}}],
///   "edges":[{"id":"e","source":"s","target":"bye"}]}"#)?.compile().expect("valid");
/// let mut runner = Runner::new(&flow);
/// let passing = runner.run("ok.chat", &parse_chat("> oi\n< Tchau!\n< (end)\n").unwrap());
/// assert!(passing.passed());
/// let failing = runner.run("bad.chat", &parse_chat("> oi\n< Tchau!\n").unwrap());
/// let failure = failing.cases[0].failure.as_ref().unwrap();
/// assert_eq!((failure.line, failure.actual.as_str()), (2, "< (end)"));
/// assert_eq!(runner.coverage().report().nodes.percent, 100.0);
/// # Ok::<(), flowcore::FlowError>(())
/// ```
#[derive(Debug)]
pub struct Runner<'f> {
    flow: &'f CompiledFlow,
    /// The flows `call_flow` nodes may call; `None` runs the flow alone.
    flows: Option<&'f FlowSet>,
    coverage: Coverage,
}

/// The outcome of one `.chat` file.
#[derive(Debug, Clone)]
pub struct FileResult {
    /// The file's name, as given.
    pub file: String,
    /// One case per conversation.
    pub cases: Vec<CaseResult>,
}

/// The outcome of one conversation.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// `conversation at line N`.
    pub name: String,
    /// The conversation's first line.
    pub line: usize,
    /// Why it failed; `None` when it passed.
    pub failure: Option<CaseFailure>,
}

/// Where and how a conversation went differently from its file.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseFailure {
    /// The file's name.
    pub file: String,
    /// The line where the difference shows.
    pub line: usize,
    /// What the file says should happen.
    pub expected: String,
    /// What happened.
    pub actual: String,
    /// The conversation up to the failure, as `> ` and `< ` lines.
    pub conversation: Vec<String>,
}

impl<'f> Runner<'f> {
    /// A runner for `flow`, no coverage yet.
    pub fn new(flow: &'f CompiledFlow) -> Self {
        Runner { flow, flows: None, coverage: Coverage::new(flow) }
    }

    /// A runner for `flow` whose `call_flow` nodes call into `flows` (which should hold
    /// `flow` too). Coverage counts `flow`'s own nodes and edges, not the called flows'.
    pub fn with_flows(flow: &'f CompiledFlow, flows: &'f FlowSet) -> Self {
        Runner { flow, flows: Some(flows), coverage: Coverage::new(flow) }
    }

    /// Runs every conversation of `chat`; `file` names it in failures.
    pub fn run(&mut self, file: &str, chat: &ChatFile) -> FileResult {
        let cases = chat
            .conversations
            .iter()
            .map(|conversation| CaseResult {
                name: format!("conversation at line {}", conversation.line),
                line: conversation.line,
                failure: self.run_conversation(conversation).err().map(|miss| CaseFailure {
                    file: file.to_string(),
                    line: miss.line,
                    expected: miss.expected,
                    actual: miss.actual,
                    conversation: miss.conversation,
                }),
            })
            .collect();
        FileResult { file: file.to_string(), cases }
    }

    /// The coverage of every conversation run so far.
    pub fn coverage(&self) -> &Coverage {
        &self.coverage
    }

    fn run_conversation(&mut self, conversation: &ChatConversation) -> Result<(), Miss> {
        let options = SessionOptions {
            seed: conversation.seed,
            variables: conversation.vars.clone(),
            ..SessionOptions::default()
        };
        let mut live = Live {
            flow: self.flow,
            flows: self.flows,
            session: Session::new(self.flow, options),
            clock: VirtualClock::new(conversation.now),
            awaited: None,
            unread: VecDeque::new(),
            transcript: Vec::new(),
            coverage: &mut self.coverage,
        };
        for step in &conversation.steps {
            let line = step.line;
            match &step.kind {
                StepKind::Send { text, inbound } => {
                    if let Some(unlisted) = live.unread.pop_front() {
                        return Err(live.miss(line, "(no more messages before this > line)", &unlisted));
                    }
                    live.transcript.push(format!("> {text}"));
                    live.send(inbound).map_err(|refused| live.miss_with(line, "the bot accepts this line", refused))?;
                }
                StepKind::Exact(expected) => match live.unread.pop_front() {
                    Some(said) if escape(&said) == *expected => {}
                    Some(said) => return Err(live.miss(line, &format!("< {expected}"), &said)),
                    None => return Err(live.miss_with(line, &format!("< {expected}"), "(nothing)".to_string())),
                },
                StepKind::Matches(regex) => match live.unread.pop_front() {
                    Some(said) if regex.is_match(&said) => {}
                    Some(said) => return Err(live.miss(line, &format!("<~ {regex}"), &said)),
                    None => return Err(live.miss_with(line, &format!("<~ {regex}"), "(nothing)".to_string())),
                },
            }
        }
        if let Some(unlisted) = live.unread.pop_front() {
            let last = conversation.steps.last().map_or(conversation.line, |s| s.line);
            return Err(live.miss(last, "(no more messages: the conversation ends here)", &unlisted));
        }
        Ok(())
    }
}

impl FileResult {
    /// Whether every conversation passed.
    pub fn passed(&self) -> bool {
        self.cases.iter().all(|c| c.failure.is_none())
    }

    /// The failures, in file order.
    pub fn failures(&self) -> impl Iterator<Item = &CaseFailure> {
        self.cases.iter().filter_map(|c| c.failure.as_ref())
    }
}

impl CaseFailure {
    /// The failure for people: file and line, expected, said, the conversation so far.
    pub fn report(&self) -> String {
        let mut text = format!(
            "FAIL {}:{}\n  expected: {}\n  bot said: {}\n  conversation so far:\n",
            self.file, self.line, self.expected, self.actual
        );
        for line in &self.conversation {
            text.push_str("    ");
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

/// A difference, before the file's name is attached.
struct Miss {
    line: usize,
    expected: String,
    actual: String,
    conversation: Vec<String>,
}

/// One conversation as it runs.
struct Live<'a, 'f> {
    flow: &'f CompiledFlow,
    flows: Option<&'f FlowSet>,
    session: Session,
    clock: VirtualClock,
    awaited: Option<EffectId>,
    /// Bot outputs (described, not escaped) no `<` line has matched yet.
    unread: VecDeque<String>,
    transcript: Vec<String>,
    coverage: &'a mut Coverage,
}

impl Live<'_, '_> {
    fn miss(&self, line: usize, expected: &str, said: &str) -> Miss {
        self.miss_with(line, expected, format!("< {}", escape(said)))
    }

    fn miss_with(&self, line: usize, expected: &str, actual: String) -> Miss {
        Miss { line, expected: expected.to_string(), actual, conversation: self.transcript.clone() }
    }

    /// Feeds one `>` line; an error says why the engine refused it.
    fn send(&mut self, inbound: &Inbound) -> Result<(), String> {
        match inbound {
            Inbound::EffectResult(result) => {
                let id = self.awaited.take().ok_or("an effect_result, but no effect is waiting")?;
                self.feed(Input::EffectResult { id, result: result.clone() }).map_err(|err| err.to_string())
            }
            Inbound::Input(input) => {
                // Every effect still waiting fails first, as in `flowctl run`.
                for _ in 0..MAX_UNANSWERED_EFFECTS {
                    let Some(id) = self.awaited.take() else { break };
                    let failed = Input::EffectResult { id, result: EffectOutcome::Failure(NO_RESULT.into()) };
                    self.feed(failed).map_err(|err| err.to_string())?;
                }
                self.feed(input.clone()).map_err(|err| err.to_string())
            }
        }
    }

    /// One input, then the delays it leads to, skipped in virtual time.
    fn feed(&mut self, input: Input) -> Result<(), SessionError> {
        let (flow, flows, coverage) = (self.flow, self.flows, &mut *self.coverage);
        let outputs = feed_skipping_delays(&mut self.session, &mut self.clock, input, |session, input, now| {
            turn(session, flow, flows, coverage, input, now)
        })?;
        self.awaited = match self.session.status() {
            SessionStatus::WaitingForEffect => awaited_effect(&outputs),
            _ => None,
        };
        for output in &outputs {
            let said = describe(output);
            self.transcript.push(format!("< {}", escape(&said)));
            self.unread.push_back(said);
        }
        Ok(())
    }
}

/// One call to the engine, its nodes added to the coverage.
fn turn(
    session: &mut Session,
    flow: &CompiledFlow,
    flows: Option<&FlowSet>,
    coverage: &mut Coverage,
    input: Input,
    now: Timestamp,
) -> Result<Vec<Output>, SessionError> {
    let waiting = matches!(
        session.status(),
        SessionStatus::WaitingForInput | SessionStatus::WaitingForEffect | SessionStatus::Sleeping
    );
    let waited_at = if waiting { session.current_node().map(str::to_string) } else { None };
    session.clear_path();
    let in_root = session.current_flow_id() == flow.id();
    let turn = match flows {
        Some(flows) => session.handle_in(flows, input, now)?,
        None => session.handle(flow, input, now)?,
    };
    // The path names the nodes of the flow the turn ended in; only the tested flow's count.
    if in_root && session.current_flow_id() == flow.id() {
        coverage.record_turn(waited_at.as_deref(), session.path());
    }
    Ok(turn.outputs)
}
