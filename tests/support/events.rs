//! A `tracing` subscriber for tests that records every event's level and fields, installed for
//! the current thread only (`tracing::subscriber::set_default`). Include it with
//! `#[path = "support/events.rs"] mod events;`.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::DefaultGuard;
use tracing::{Event, Level, Metadata, Subscriber};

/// One recorded event: its level and its fields (`message` included) as text.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub level: Level,
    pub fields: BTreeMap<String, String>,
}

impl Recorded {
    /// A field's text, if the event has it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// The events recorded since [`capture`] was called on this thread.
#[derive(Clone, Default)]
pub struct Events(Arc<Mutex<Vec<Recorded>>>);

impl Events {
    /// Every event so far.
    pub fn all(&self) -> Vec<Recorded> {
        self.0.lock().unwrap().clone()
    }

    /// The events at `level`.
    pub fn at(&self, level: Level) -> Vec<Recorded> {
        self.all()
            .into_iter()
            .filter(|e| e.level == level)
            .collect()
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

struct Recorder(Events);

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let level = *event.metadata().level();
        (self.0).0.lock().unwrap().push(Recorded { level, fields });
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// Records the events of this thread until the guard is dropped.
pub fn capture() -> (Events, DefaultGuard) {
    let events = Events::default();
    let guard = tracing::subscriber::set_default(Recorder(events.clone()));
    (events, guard)
}
