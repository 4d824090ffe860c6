//! `cancel-order` (the seeds' CancelOrderService): decide whether a cancel
//! request cancels the order. Input topic `order-cancel-requests`; output
//! topic `order-events`. The "already cancelled?" check needs the order's
//! state: that is the decider version, `cancel-order-decider`.

wit_bindgen::generate!({ world: "handler", path: "../../wit" });

mod rules;

use exports::sluice::handler::handle::Guest;
use rules::{CancelRequest, Invalid};
use sluice::handler::types::{HandleError, Message, Output};

fn invalid(Invalid(detail): Invalid) -> HandleError {
    HandleError::InvalidInput(detail)
}

struct CancelOrder;

impl Guest for CancelOrder {
    fn handle(msg: Message) -> Result<Vec<Output>, HandleError> {
        let request = CancelRequest::read(&msg.payload).map_err(invalid)?;
        let order_id = request.order_id().map_err(invalid)?;
        Ok(request.verdict().map_err(invalid)?.outputs(order_id))
    }
}

export!(CancelOrder);
