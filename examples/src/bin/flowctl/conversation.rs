//! One conversation with a compiled flow, as `run` and `chat` drive it.

use flowcore::{CompiledFlow, FlowSet, Input, Output, Session, SessionError, SessionOptions, SessionStatus};
use flowcore_examples::transcript::{feed_skipping_delays, VirtualClock};

use crate::clock;
use crate::load::flow_set;
use crate::{Failure, RunOptions};

/// A session plus the clock it runs on, in the set of the flow and its `--with` flows.
pub(crate) struct Conversation {
    flows: FlowSet,
    session: Session,
    clock: VirtualClock,
}

impl Conversation {
    /// A new conversation, not started yet: the first input starts it.
    pub(crate) fn new(flow: CompiledFlow, options: &RunOptions) -> Result<Self, Failure> {
        let clock = clock::from_flag(options.now.as_deref())?;
        let variables = match &options.vars {
            None => serde_json::Map::new(),
            Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Object(map)) => map,
                Ok(_) => return Err(Failure::unreadable("--vars must be a JSON object")),
                Err(err) => return Err(Failure::unreadable(format!("--vars is not valid JSON: {err}"))),
            },
        };
        let session_options = SessionOptions { seed: options.seed, variables, ..SessionOptions::default() };
        let session = Session::new(&flow, session_options);
        let flows = flow_set(&flow, &options.with)?;
        Ok(Conversation { flows, session, clock })
    }

    /// Feeds one input. Delays are skipped in virtual time, so their outputs follow at once;
    /// a tick first moves the clock to the session's wake-up time.
    pub(crate) fn send(&mut self, input: Input) -> Result<Vec<Output>, SessionError> {
        let flows = &self.flows;
        feed_skipping_delays(&mut self.session, &mut self.clock, input, |session, input, now| {
            session.handle_in(flows, input, now).map(|turn| turn.outputs)
        })
    }

    /// Lets time pass up to the session's next wake-up (an idle timeout) and feeds a tick.
    pub(crate) fn tick(&mut self) -> Result<Vec<Output>, SessionError> {
        self.send(Input::Tick)
    }

    /// Whether the session is waiting for an effect's result.
    pub(crate) fn waits_for_effect(&self) -> bool {
        self.session.status() == SessionStatus::WaitingForEffect
    }
}
