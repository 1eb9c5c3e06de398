//! The end of an operation of a [`LocalPort`](crate::LocalPort).

use std::{
    fmt,
    ops::{Deref, DerefMut},
};

use crate::{Completion, OpId, OpKind, PooledBuf, completion::Output};

/// One finished operation, dequeued from a [`LocalPort`](crate::LocalPort).
///
/// It is a [`Completion`] (it dereferences to one: [`context`](Completion::context),
/// [`user`](Completion::user), [`kind`](Completion::kind), [`result`](Completion::result),
/// [`take_buffer`](Completion::take_buffer), [`take_accepted`](Completion::take_accepted), ...)
/// that may also hold a buffer of the port's pool: the bytes of a pooled receive, or the buffer
/// a pooled send sent, both taken by [`take_pooled`](LocalCompletion::take_pooled). Like the
/// pool's buffers it stays on the port's thread.
///
/// ```no_run
/// # fn f(port: &proactor::LocalPort) -> std::io::Result<()> {
/// let mut done = port.get_completion(None)?;
/// match (done.kind(), done.result()) {
///     (proactor::OpKind::RecvPooled, Ok(0)) => println!("end of stream"),
///     (proactor::OpKind::RecvPooled, Ok(n)) => {
///         let data = done.take_pooled().expect("a pooled receive's data");
///         assert_eq!(data.len(), n);
///     }
///     (kind, result) => println!("{kind}: {result:?}"),
/// }
/// # Ok(()) }
/// ```
pub struct LocalCompletion {
    completion: Completion,
    pooled: Option<PooledBuf>,
}

impl LocalCompletion {
    pub(crate) fn new(completion: Completion, pooled: Option<PooledBuf>) -> LocalCompletion {
        LocalCompletion { completion, pooled }
    }

    /// A message of multishot pooled receive `id` (of handle context `context`), which goes on.
    pub(crate) fn message(
        context: usize,
        user: usize,
        id: OpId,
        buf: PooledBuf,
    ) -> LocalCompletion {
        let result = Ok(buf.len());
        let mut c = Completion::of(context, user, id, OpKind::RecvPooled, result, Output::None);
        c.more = true;
        LocalCompletion::new(c, Some(buf))
    }

    /// Takes the pool buffer this completion holds: the data of a successful
    /// [`recv_pooled`](crate::LocalPort::recv_pooled) (as many bytes as
    /// [`result`](Completion::result) says), or the buffer a
    /// [`send_pooled`](crate::LocalPort::send_pooled) sent; `None` otherwise, or when already
    /// taken. Dropping the buffer (or this completion, untaken) gives it back to the pool.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>) -> std::io::Result<()> {
    /// port.recv_pooled(conn);
    /// let mut done = port.get_completion(None)?;
    /// if let Some(data) = done.take_pooled() {
    ///     port.send_pooled(conn, data); // echo it back, no copy
    /// }
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn take_pooled(&mut self) -> Option<PooledBuf> {
        self.pooled.take()
    }

    /// The pool buffer this completion holds, left in place (see
    /// [`take_pooled`](LocalCompletion::take_pooled)): for a look without taking it, such as
    /// how many bytes a pooled send held.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort) -> std::io::Result<()> {
    /// let done = port.get_completion(None)?;
    /// if let (proactor::OpKind::SendPooled, Some(buf)) = (done.kind(), done.pooled()) {
    ///     assert_eq!(done.result()?, buf.len()); // sent whole
    /// }
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn pooled(&self) -> Option<&PooledBuf> {
        self.pooled.as_ref()
    }

    /// The completion without its pool buffer (which goes back to the pool if it was not
    /// taken): a plain [`Completion`], which may leave the port's thread.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort) -> std::io::Result<()> {
    /// let done: proactor::Completion = port.get_completion(None)?.into_completion();
    /// std::thread::spawn(move || println!("{done:?}"));
    /// # Ok(()) }
    /// ```
    pub fn into_completion(self) -> Completion {
        self.completion
    }
}

impl Deref for LocalCompletion {
    type Target = Completion;

    #[inline]
    fn deref(&self) -> &Completion {
        &self.completion
    }
}

impl DerefMut for LocalCompletion {
    #[inline]
    fn deref_mut(&mut self) -> &mut Completion {
        &mut self.completion
    }
}

impl fmt::Debug for LocalCompletion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCompletion")
            .field("completion", &self.completion)
            .field("pooled", &self.pooled)
            .finish()
    }
}
