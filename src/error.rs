//! The error of a builder given a value outside its valid range.

use std::borrow::Cow;
use std::fmt;

/// A setting was given a value outside its valid range.
///
/// Returned by the builders' `build()`; its message names the setting and the valid range.
///
/// ```
/// use tower_negative_cache::StatusAwareRetryLayer;
///
/// let err = StatusAwareRetryLayer::builder().max_retries(11).build().unwrap_err();
/// assert_eq!(err.setting(), "max_retries");
/// assert_eq!(err.to_string(), "invalid `max_retries`: 11 is outside 0..=10");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildError {
    setting: &'static str,
    reason: Cow<'static, str>,
}

impl BuildError {
    pub(crate) fn new(setting: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        BuildError {
            setting,
            reason: reason.into(),
        }
    }

    /// `value` is outside `range` (both as the user would write them).
    pub(crate) fn range(setting: &'static str, value: impl fmt::Debug, range: &str) -> Self {
        Self::new(setting, format!("{value:?} is outside {range}"))
    }

    /// The name of the builder setter whose value was refused.
    pub fn setting(&self) -> &'static str {
        self.setting
    }
}

/// The first invalid setting a builder was given: setters check their value at once and
/// `build()` reports the first failure.
#[derive(Clone, Debug, Default)]
pub(crate) struct FirstError(Option<BuildError>);

impl FirstError {
    pub(crate) fn fail(&mut self, e: BuildError) {
        self.0.get_or_insert(e);
    }

    /// Whether `value` lies in `range` (written as `shown` in the message); records it if not.
    pub(crate) fn check<T: PartialOrd + fmt::Debug>(
        &mut self,
        setting: &'static str,
        value: T,
        range: std::ops::RangeInclusive<T>,
        shown: &str,
    ) -> bool {
        let ok = range.contains(&value);
        if !ok {
            self.fail(BuildError::range(setting, value, shown));
        }
        ok
    }

    pub(crate) fn result(self) -> Result<(), BuildError> {
        self.0.map_or(Ok(()), Err)
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid `{}`: {}", self.setting, self.reason)
    }
}

impl std::error::Error for BuildError {}
