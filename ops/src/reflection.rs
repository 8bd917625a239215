//! gRPC server reflection (v1 and v1alpha) as its specification describes
//! it, for what one server serves (tonic-reflection lists every service of
//! every descriptor set it is given, and ends the stream at the first
//! symbol it does not know):
//!
//! - ListServices names only the services this server serves, plus health
//!   and reflection.
//! - Files are those that declare a served service, the `google.rpc` error
//!   details (so grpcurl decodes a status's details), and every file they
//!   import; another server's service, and the files only it needs, are
//!   unknown here.
//! - An answer carries the file asked for and the files it imports that
//!   this stream has not sent yet, as grpc-go does.
//! - A symbol, file or extension it does not know is answered in the stream
//!   (`error_response`, NOT_FOUND), which stays open for the next request.
//!
//! Files are answered with the exact bytes of the descriptor set, so custom
//! options (field behaviour and the like) reach the client intact.
//!
//! Anyone who can connect may call it: a request is at most
//! [`MAX_REQUEST_BYTES`], refused before it is decoded (tonic's default
//! was 4 MiB, and a request's `host` is echoed in each answer).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorProto};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// The largest reflection request decoded: a symbol or file name, a host,
/// and their framing.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// The services every server serves besides its own.
const STANDARD_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Packages whose files are resolvable on every server: the rich error
/// details a status may carry.
const SHARED_PACKAGES: [&str; 1] = ["google.rpc"];

/// The reflection service of one server; [`Reflection::v1`] and
/// [`Reflection::v1alpha`] serve it in both protocol versions.
#[derive(Debug, Clone)]
pub struct Reflection {
    index: Arc<Index>,
}

impl Reflection {
    /// Reflection over `services` (full names) described in the encoded
    /// `FileDescriptorSet`s `descriptor_sets`; health and reflection are
    /// added with their own descriptors.
    pub fn new(descriptor_sets: &[&[u8]], services: &[&str]) -> Result<Self, prost::DecodeError> {
        let mut sets = descriptor_sets.to_vec();
        sets.extend([
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ]);
        let served: Vec<&str> = STANDARD_SERVICES.iter().chain(services).copied().collect();
        Ok(Self {
            index: Arc::new(Index::build(&sets, &served)?),
        })
    }

    /// The v1 service.
    pub fn v1(
        &self,
    ) -> tonic_reflection::pb::v1::server_reflection_server::ServerReflectionServer<Self> {
        tonic_reflection::pb::v1::server_reflection_server::ServerReflectionServer::new(
            self.clone(),
        )
        .max_decoding_message_size(MAX_REQUEST_BYTES)
    }

    /// The v1alpha service (grpcurl 1.8 speaks only this one).
    pub fn v1alpha(
        &self,
    ) -> tonic_reflection::pb::v1alpha::server_reflection_server::ServerReflectionServer<Self> {
        tonic_reflection::pb::v1alpha::server_reflection_server::ServerReflectionServer::new(
            self.clone(),
        )
        .max_decoding_message_size(MAX_REQUEST_BYTES)
    }
}

/// One request, whichever protocol version it came in.
#[derive(Debug)]
enum Ask<'a> {
    File(&'a str),
    Symbol(&'a str),
    Extension,
    ExtensionNumbers(&'a str),
    Services,
    Nothing,
}

/// One answer, before it is put in a version's message.
#[derive(Debug)]
enum Answer {
    Files(Vec<Vec<u8>>),
    ExtensionNumbers(String),
    Services(Vec<String>),
    Error(tonic::Code, String),
}

/// What a server's reflection knows.
#[derive(Debug)]
struct Index {
    /// Served services, sorted.
    services: Vec<String>,
    /// File name → its encoded `FileDescriptorProto` and its imports.
    files: HashMap<String, (Vec<u8>, Vec<String>)>,
    /// Full symbol name (no leading dot) → the file that defines it.
    symbols: HashMap<String, String>,
    /// Full names of messages, for extension-number requests.
    messages: HashSet<String>,
}

/// A `FileDescriptorSet` with each file left encoded (field 1, repeated).
#[derive(Clone, PartialEq, prost::Message)]
struct RawSet {
    #[prost(bytes = "vec", repeated, tag = "1")]
    file: Vec<Vec<u8>>,
}

impl Index {
    fn build(sets: &[&[u8]], served: &[&str]) -> Result<Self, prost::DecodeError> {
        let mut all: HashMap<String, (Vec<u8>, FileDescriptorProto)> = HashMap::new();
        for set in sets {
            for raw in RawSet::decode(*set)?.file {
                let file = FileDescriptorProto::decode(raw.as_slice())?;
                all.entry(file.name().to_owned()).or_insert((raw, file));
            }
        }
        let mut pending: Vec<String> = all
            .values()
            .filter(|(_, file)| {
                SHARED_PACKAGES.contains(&file.package())
                    || file.service.iter().any(|service| {
                        served.contains(&full_name(file.package(), service.name()).as_str())
                    })
            })
            .map(|(_, file)| file.name().to_owned())
            .collect();
        let mut index = Self {
            services: served.iter().map(|s| (*s).to_owned()).collect(),
            files: HashMap::new(),
            symbols: HashMap::new(),
            messages: HashSet::new(),
        };
        index.services.sort_unstable();
        while let Some(name) = pending.pop() {
            if index.files.contains_key(&name) {
                continue;
            }
            let Some((raw, file)) = all.get(&name) else {
                continue;
            };
            pending.extend(file.dependency.iter().cloned());
            index.add_symbols(file, served);
            index
                .files
                .insert(name, (raw.clone(), file.dependency.clone()));
        }
        Ok(index)
    }

    fn add_symbols(&mut self, file: &FileDescriptorProto, served: &[&str]) {
        let package = file.package();
        let name = file.name().to_owned();
        for service in &file.service {
            let service_name = full_name(package, service.name());
            // A file may declare services this server does not serve.
            if !served.contains(&service_name.as_str()) {
                continue;
            }
            for method in &service.method {
                self.symbols
                    .insert(full_name(&service_name, method.name()), name.clone());
            }
            self.symbols.insert(service_name, name.clone());
        }
        for message in &file.message_type {
            self.add_message(package, message, &name);
        }
        for enumeration in &file.enum_type {
            self.symbols
                .insert(full_name(package, enumeration.name()), name.clone());
        }
        for extension in &file.extension {
            self.symbols
                .insert(full_name(package, extension.name()), name.clone());
        }
    }

    fn add_message(&mut self, scope: &str, message: &DescriptorProto, file: &str) {
        let message_name = full_name(scope, message.name());
        for field in &message.field {
            self.symbols
                .insert(full_name(&message_name, field.name()), file.to_owned());
        }
        for nested in &message.nested_type {
            self.add_message(&message_name, nested, file);
        }
        for enumeration in &message.enum_type {
            self.symbols.insert(
                full_name(&message_name, enumeration.name()),
                file.to_owned(),
            );
        }
        self.messages.insert(message_name.clone());
        self.symbols.insert(message_name, file.to_owned());
    }

    fn answer(&self, ask: Ask<'_>, sent: &mut HashSet<String>) -> Answer {
        match ask {
            Ask::File(name) => self.file_with_imports(name, sent),
            Ask::Symbol(symbol) => match self.symbols.get(symbol.trim_start_matches('.')) {
                Some(file) => self.file_with_imports(file, sent),
                None => not_found("symbol not found"),
            },
            Ask::Extension => not_found("extension not found"),
            Ask::ExtensionNumbers(name) => {
                let name = name.trim_start_matches('.');
                if self.messages.contains(name) {
                    Answer::ExtensionNumbers(name.to_owned())
                } else {
                    not_found("type not found")
                }
            }
            Ask::Services => Answer::Services(self.services.clone()),
            Ask::Nothing => Answer::Error(
                tonic::Code::InvalidArgument,
                "no message_request".to_owned(),
            ),
        }
    }

    /// `name` and every file it imports, directly or not, that this stream
    /// has not sent yet (`name` itself always).
    fn file_with_imports(&self, name: &str, sent: &mut HashSet<String>) -> Answer {
        let Some((raw, _)) = self.files.get(name) else {
            return not_found("file not found");
        };
        let mut files = vec![raw.clone()];
        sent.insert(name.to_owned());
        let mut pending: Vec<&str> = self.imports(name);
        while let Some(import) = pending.pop() {
            if !sent.insert(import.to_owned()) {
                continue;
            }
            if let Some((raw, _)) = self.files.get(import) {
                files.push(raw.clone());
                pending.extend(self.imports(import));
            }
        }
        Answer::Files(files)
    }

    fn imports(&self, name: &str) -> Vec<&str> {
        self.files
            .get(name)
            .map(|(_, imports)| imports.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }
}

fn full_name(scope: &str, name: &str) -> String {
    if scope.is_empty() {
        name.to_owned()
    } else {
        format!("{scope}.{name}")
    }
}

fn not_found(message: &str) -> Answer {
    Answer::Error(tonic::Code::NotFound, message.to_owned())
}

/// The two protocol versions have the same messages in two packages: one
/// implementation, written once for both.
macro_rules! serve_version {
    ($version:ident) => {
        #[tonic::async_trait]
        impl tonic_reflection::pb::$version::server_reflection_server::ServerReflection
            for Reflection
        {
            type ServerReflectionInfoStream = ReceiverStream<
                Result<tonic_reflection::pb::$version::ServerReflectionResponse, tonic::Status>,
            >;

            async fn server_reflection_info(
                &self,
                request: tonic::Request<
                    tonic::Streaming<tonic_reflection::pb::$version::ServerReflectionRequest>,
                >,
            ) -> Result<tonic::Response<Self::ServerReflectionInfoStream>, tonic::Status> {
                use pb::server_reflection_request::MessageRequest;
                use pb::server_reflection_response::MessageResponse;
                use tonic_reflection::pb::$version as pb;
                let mut requests = request.into_inner();
                let index = Arc::clone(&self.index);
                let (responses, stream) = mpsc::channel(1);
                tokio::spawn(async move {
                    let mut sent = HashSet::new();
                    loop {
                        let request = match requests.message().await {
                            Ok(Some(request)) => request,
                            Ok(None) => return,
                            // A request that could not be read (too large,
                            // malformed) ends the stream with its status.
                            Err(status) => {
                                let _ = responses.send(Err(status)).await;
                                return;
                            }
                        };
                        let ask = match &request.message_request {
                            Some(MessageRequest::FileByFilename(name)) => Ask::File(name),
                            Some(MessageRequest::FileContainingSymbol(symbol)) => {
                                Ask::Symbol(symbol)
                            }
                            Some(MessageRequest::FileContainingExtension(_)) => Ask::Extension,
                            Some(MessageRequest::AllExtensionNumbersOfType(name)) => {
                                Ask::ExtensionNumbers(name)
                            }
                            Some(MessageRequest::ListServices(_)) => Ask::Services,
                            None => Ask::Nothing,
                        };
                        let answer = match index.answer(ask, &mut sent) {
                            Answer::Files(files) => MessageResponse::FileDescriptorResponse(
                                pb::FileDescriptorResponse {
                                    file_descriptor_proto: files,
                                },
                            ),
                            Answer::ExtensionNumbers(base_type_name) => {
                                MessageResponse::AllExtensionNumbersResponse(
                                    pb::ExtensionNumberResponse {
                                        base_type_name,
                                        extension_number: Vec::new(),
                                    },
                                )
                            }
                            Answer::Services(names) => {
                                MessageResponse::ListServicesResponse(pb::ListServiceResponse {
                                    service: names
                                        .into_iter()
                                        .map(|name| pb::ServiceResponse { name })
                                        .collect(),
                                })
                            }
                            Answer::Error(code, error_message) => {
                                MessageResponse::ErrorResponse(pb::ErrorResponse {
                                    error_code: code as i32,
                                    error_message,
                                })
                            }
                        };
                        let response = pb::ServerReflectionResponse {
                            valid_host: request.host.clone(),
                            original_request: Some(request),
                            message_response: Some(answer),
                        };
                        if responses.send(Ok(response)).await.is_err() {
                            return;
                        }
                    }
                });
                Ok(tonic::Response::new(ReceiverStream::new(stream)))
            }
        }
    };
}

serve_version!(v1);
serve_version!(v1alpha);
