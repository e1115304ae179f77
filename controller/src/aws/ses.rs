//! [`Mailer`] on SES (v2): notifications to operators and users.

use aws_config::SdkConfig;
use aws_sdk_sesv2::Client;
use aws_sdk_sesv2::types::{Body, Content, Destination, EmailContent, Message};

use super::error::{classify, local};
use crate::ports::{CallError, ErrorKind, Mailer};

const SERVICE: &str = "sesv2";
const OPERATION: &str = "SendEmail";
const CHARSET: &str = "UTF-8";

/// SES, sending from one verified address.
#[derive(Debug, Clone)]
pub struct Ses {
    client: Client,
    from: String,
}

impl Ses {
    /// A mailer on `conf` that sends from `from`, an address (or an address of a domain)
    /// verified in SES.
    pub fn new(conf: &SdkConfig, from: impl Into<String>) -> Ses {
        Ses {
            client: Client::new(conf),
            from: from.into(),
        }
    }
}

fn text(data: &str) -> Result<Content, CallError> {
    Content::builder()
        .data(data)
        .charset(CHARSET)
        .build()
        .map_err(|e| local(SERVICE, OPERATION, ErrorKind::Other, e.to_string()))
}

impl Mailer for Ses {
    async fn send(&self, to: &[String], subject: &str, body: &str) -> Result<(), CallError> {
        let message = Message::builder()
            .subject(text(subject)?)
            .body(Body::builder().text(text(body)?).build())
            .build();
        self.client
            .send_email()
            .from_email_address(&self.from)
            .destination(
                Destination::builder()
                    .set_to_addresses(Some(to.to_vec()))
                    .build(),
            )
            .content(EmailContent::builder().simple(message).build())
            .send()
            .await
            .map_err(|e| classify(SERVICE, OPERATION, &e))?;
        Ok(())
    }
}
