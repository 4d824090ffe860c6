//! A handler that queries a database through an import no sluice host
//! provides, for the load-time import check.

wit_bindgen::generate!({ world: "handler-with-db", path: "wit", generate_all });

use exports::sluice::handler::handle::Guest;
use sluice::handler::types::{HandleError, Message, Output};

struct WithDb;

impl Guest for WithDb {
    fn handle(msg: Message) -> Result<Vec<Output>, HandleError> {
        let sql = String::from_utf8_lossy(&msg.payload);
        Err(HandleError::Failed(test::unknown_import::query::run(&sql)))
    }
}

export!(WithDb);
