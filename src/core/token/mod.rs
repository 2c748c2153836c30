//! One ApiToken: [`validate`] its spec, read what its Secret holds ([`secret`]), and [`plan`] the
//! Secret write, the status and the Event.

pub mod plan;
pub mod secret;
pub mod validate;
