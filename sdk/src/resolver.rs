//! The [`Resolver`] trait: a custom conflict rule.

pub use crate::resolver_bindings::exports::duplex::plugin::resolver::{Conflict, Resolution, Side};

/// A conflict rule. It sees one conflicting field at a time and must answer from its input alone:
/// the host gives rules no I/O, a fixed clock and seeded randomness.
///
/// ```no_run
/// use duplex_sdk::{register_resolver, Conflict, Resolution, Resolver, Value};
///
/// /// Stock counts: the lower count wins, as it is the safer one to sell from.
/// struct LowerStock;
///
/// impl Resolver for LowerStock {
///     fn resolve(c: &Conflict) -> Resolution {
///         match (&c.left.value, &c.right.value) {
///             (Value::Integer(l), Value::Integer(r)) if l <= r => Resolution::TakeLeft,
///             (Value::Integer(_), Value::Integer(_)) => Resolution::TakeRight,
///             _ => Resolution::Manual(format!("{} is not a count", c.field)),
///         }
///     }
/// }
///
/// register_resolver!(LowerStock);
/// ```
pub trait Resolver {
    /// Decides one conflict.
    fn resolve(conflict: &Conflict) -> Resolution;
}

impl Conflict {
    /// Every side, in the sync's order: left, right, then its third side and on (`others`,
    /// empty in a sync of two). [`Resolution::take`] takes one by its position here.
    pub fn sides(&self) -> impl Iterator<Item = &Side> {
        [&self.left, &self.right].into_iter().chain(&self.others)
    }
}

impl Resolution {
    /// Keeps the value of the side at `index` of [`Conflict::sides`]: 0 is the left, 1 the
    /// right, 2 the third side.
    pub fn take(index: usize) -> Resolution {
        match index {
            0 => Resolution::TakeLeft,
            1 => Resolution::TakeRight,
            n => Resolution::TakeOther(u32::try_from(n - 2).unwrap_or(u32::MAX)),
        }
    }
}

/// Registers `T` as this component's conflict rule. Use once, at the crate root.
#[macro_export]
macro_rules! register_resolver {
    ($resolver:ty) => {
        #[doc(hidden)]
        struct __DuplexResolver;

        impl $crate::__private::resolver_bindings::exports::duplex::plugin::resolver::Guest
            for __DuplexResolver
        {
            fn resolve(conflicts: Vec<$crate::Conflict>) -> Vec<$crate::Resolution> {
                $crate::__private::resolver::resolve_all::<$resolver>(&conflicts)
            }
        }

        $crate::__private::resolver_bindings::__export_resolver_world!(
            __DuplexResolver with_types_in $crate::__private::resolver_bindings
        );
    };
}

#[doc(hidden)]
pub mod adapter {
    use super::*;

    /// One resolution per conflict, in order, as the contract requires.
    pub fn resolve_all<R: Resolver>(conflicts: &[Conflict]) -> Vec<Resolution> {
        conflicts.iter().map(R::resolve).collect()
    }
}
