//! Ordered acknowledgements: positions come out only after every record sent
//! before them was acknowledged by Kafka.

use rdkafka::producer::DeliveryFuture;
use tokio::sync::mpsc;

use crate::BusError;

enum Item<M> {
    Delivery { topic: std::sync::Arc<str>, fut: DeliveryFuture },
    Marker(M),
}

/// Sending half: push deliveries and markers in send order.
pub struct AckSender<M> {
    tx: mpsc::Sender<Item<M>>,
}

impl<M> Clone for AckSender<M> {
    fn clone(&self) -> Self {
        AckSender { tx: self.tx.clone() }
    }
}

/// Receiving half: yields markers whose predecessors are all acknowledged.
pub struct AckReceiver<M> {
    rx: mpsc::Receiver<Item<M>>,
    acked: u64,
}

/// A bounded queue of `capacity` deliveries and markers. When it is full,
/// [`AckSender::delivery`] waits: the source slows down to Kafka's pace.
pub fn ack_queue<M>(capacity: usize) -> (AckSender<M>, AckReceiver<M>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (AckSender { tx }, AckReceiver { rx, acked: 0 })
}

impl<M> AckSender<M> {
    /// Registers a record's delivery future.
    pub async fn delivery(&self, topic: std::sync::Arc<str>, fut: DeliveryFuture) -> Result<(), BusError> {
        self.tx.send(Item::Delivery { topic, fut }).await.map_err(|_| BusError::Closed)
    }

    /// Registers a marker (e.g. a source position at a transaction boundary).
    pub async fn marker(&self, marker: M) -> Result<(), BusError> {
        self.tx.send(Item::Marker(marker)).await.map_err(|_| BusError::Closed)
    }
}

impl<M> AckReceiver<M> {
    /// Waits for the next marker, after awaiting every delivery before it.
    /// `Ok(None)` when the sender is gone and everything was acknowledged.
    /// A failed delivery is an error: no marker after it is ever returned.
    pub async fn next(&mut self) -> Result<Option<M>, BusError> {
        loop {
            match self.rx.recv().await {
                None => return Ok(None),
                Some(Item::Marker(m)) => return Ok(Some(m)),
                Some(Item::Delivery { topic, fut }) => match fut.await {
                    Ok(Ok(_)) => self.acked += 1,
                    Ok(Err((e, _))) => return Err(BusError::Delivery { topic: topic.to_string(), source: e }),
                    Err(_) => return Err(BusError::Closed),
                },
            }
        }
    }

    /// Records acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked
    }
}
