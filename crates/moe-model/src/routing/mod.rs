//! Everything that decides which experts a token uses: the router (logits, policy), the routing
//! step around it ([`control`]: jitter, the selection bias of auxiliary-loss-free balancing
//! ([`bias_balance`]), the mean-k budget ([`budget`]), expert choice ([`expert_choice`]) and
//! capacity dropping ([`capacity`])), and the balancing losses' settings ([`balance`]).

pub mod balance;
pub mod bias_balance;
pub mod budget;
pub mod capacity;
pub mod control;
pub mod expert_choice;
pub mod router;
