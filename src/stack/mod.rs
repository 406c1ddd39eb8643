//! The stack itself, beside its data: its definition as captured with every snapshot
//! ([`definition`]), the plan a restore makes from it for a given engine ([`plan`]), and carrying
//! that plan out ([`apply`]), in the order a whole-stack restore takes ([`restore`]).

pub mod apply;
pub mod definition;
pub mod plan;
pub mod restore;
