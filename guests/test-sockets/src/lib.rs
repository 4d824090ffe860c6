//! A test handler that needs the network: it opens a TCP connection with
//! the standard library, so the component imports `wasi:sockets`. The host
//! gives handlers no network, and must refuse it when it is loaded.

wit_bindgen::generate!({ world: "handler", path: "../../wit" });

use exports::sluice::handler::handle::Guest;
use sluice::handler::types::{HandleError, Message, Output};

struct Sockets;

impl Guest for Sockets {
    fn handle(_msg: Message) -> Result<Vec<Output>, HandleError> {
        match std::net::TcpStream::connect("127.0.0.1:9") {
            Ok(_) => Ok(vec![]),
            Err(e) => Err(HandleError::Failed(format!("connect: {e}"))),
        }
    }
}

export!(Sockets);
