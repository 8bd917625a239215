// Command workflow is a Go client of agentregistry built with stock tools:
// Debian's protoc and protoc-gen-go (goprotobuf 1.3, `plugins=grpc`),
// grpc-go, and genproto's errdetails for the rich error details. The
// agentregistry package is generated from proto/agentregistry/ only; the
// google/rpc and google/api messages are genproto's (a copy generated from
// proto/google/ would register the same names a second time).
//
// It runs the report's workflow against a running registry-service (create
// provider, create agent, update, list versions, diff, rollback, resolve as
// runtime), then refused calls with their details decoded, and the two
// contract points Go users tripped on: ResolveAgent's `version_number` has
// presence where GetAgentVersion's does not, and DeleteAgent takes `id`
// where DeleteProvider takes `provider_id`.
//
// Every step is checked; the first mismatch prints what differed and the
// process exits 1. On success the last line is exactly:
//
//	go workflow: all N checks passed
//
// Usage: workflow -registry HOST:PORT -admin-token T -editor-token T
//
//	-viewer-token T -runtime-token T
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"reflect"
	"time"

	pb "github.com/agentregistry/agentregistry/gen/go/agentregistry/v1"
	"github.com/golang/protobuf/proto"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/genproto/protobuf/field_mask"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// timeout is each call's deadline: a hung server fails the run instead of
// blocking it.
const timeout = 15 * time.Second

// apiKey is the provider credential; the test checks it never reaches the
// services' logs.
const apiKey = "sk-go-client-key"

// domain is the ErrorInfo domain common.proto documents.
const domain = "registry.agentregistry.dev"

// unknownID is well-formed (UUIDv7) and names nothing.
const unknownID = "01890a5d-ac96-774b-bcce-b302099a8057"

var count int

// check records one passed check, or stops the program.
func check(ok bool, what string) {
	if !ok {
		fmt.Fprintf(os.Stderr, "FAILED: %s\n", what)
		os.Exit(1)
	}
	count++
	fmt.Printf("ok %d: %s\n", count, what)
}

// equal checks that got deep-equals want.
func equal(got, want interface{}, what string) {
	if !reflect.DeepEqual(got, want) {
		fmt.Fprintf(os.Stderr, "FAILED: %s: got %#v, want %#v\n", what, got, want)
		os.Exit(1)
	}
	count++
	fmt.Printf("ok %d: %s == %#v\n", count, what, want)
}

// must stops the program on an unexpected error.
func must(err error, what string) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAILED: %s: %v\n", what, err)
		os.Exit(1)
	}
}

// as returns a context with the caller's bearer token and the call deadline.
func as(token string) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token), cancel
}

// details is a refused call's status and its details, by message type.
type details struct {
	status       *status.Status
	errorInfo    *errdetails.ErrorInfo
	badRequest   *errdetails.BadRequest
	resourceInfo *errdetails.ResourceInfo
	precondition *errdetails.PreconditionFailure
}

// refused checks that err is a gRPC status with the code wanted and
// returns its details, decoded by grpc-go's status package into genproto's
// types.
func refused(err error, want codes.Code, what string) details {
	check(err != nil, what+": refused")
	st, ok := status.FromError(err)
	check(ok, what+": a gRPC status")
	equal(st.Code(), want, what+": code")
	var d details
	d.status = st
	for _, detail := range st.Details() {
		switch v := detail.(type) {
		case *errdetails.ErrorInfo:
			d.errorInfo = v
		case *errdetails.BadRequest:
			d.badRequest = v
		case *errdetails.ResourceInfo:
			d.resourceInfo = v
		case *errdetails.PreconditionFailure:
			d.precondition = v
		case error:
			// status.Details reports a detail it cannot decode as an error.
			fmt.Fprintf(os.Stderr, "FAILED: %s: undecodable detail: %v\n", what, v)
			os.Exit(1)
		}
	}
	if d.errorInfo != nil {
		equal(d.errorInfo.Domain, domain, what+": ErrorInfo.domain")
	}
	return d
}

func main() {
	registry := flag.String("registry", "", "registry address, HOST:PORT")
	admin := flag.String("admin-token", "", "token with the admin role")
	editor := flag.String("editor-token", "", "token with the editor role")
	viewer := flag.String("viewer-token", "", "token with the viewer role")
	runner := flag.String("runtime-token", "", "token with the runtime role")
	flag.Parse()
	for name, value := range map[string]string{
		"registry": *registry, "admin-token": *admin, "editor-token": *editor,
		"viewer-token": *viewer, "runtime-token": *runner,
	} {
		if value == "" {
			fmt.Fprintf(os.Stderr, "missing -%s\n", name)
			os.Exit(2)
		}
	}

	// The error details are genproto's own types, registered once: nothing
	// generated here declares google.rpc messages again.
	equal(proto.MessageType("google.rpc.ErrorInfo"), reflect.TypeOf(&errdetails.ErrorInfo{}),
		"google.rpc.ErrorInfo is genproto's errdetails.ErrorInfo")

	dialCtx, cancelDial := context.WithTimeout(context.Background(), timeout)
	conn, err := grpc.DialContext(dialCtx, *registry, grpc.WithInsecure(), grpc.WithBlock())
	cancelDial()
	must(err, "dial "+*registry)
	defer conn.Close()
	providers := pb.NewProviderServiceClient(conn)
	agents := pb.NewAgentServiceClient(conn)
	runtime := pb.NewRuntimeServiceClient(conn)

	// Create provider (admin): the key goes in, only api_key_set comes out.
	ctx, cancel := as(*admin)
	provider, err := providers.CreateProvider(ctx, &pb.CreateProviderRequest{Provider: &pb.Provider{
		Name:         "OpenAI GPT-4 (go)",
		ProviderType: pb.ProviderType_PROVIDER_TYPE_OPENAI,
		ModelName:    "gpt-4",
		ApiKey:       apiKey,
		IsDefault:    true,
		DefaultParameters: &pb.ModelParameters{
			XTemperature: &pb.ModelParameters_Temperature{Temperature: 0.5},
			XMaxTokens:   &pb.ModelParameters_MaxTokens{MaxTokens: 2048},
		},
	}})
	cancel()
	must(err, "CreateProvider")
	equal(len(provider.Id), 36, "CreateProvider id is a UUID")
	equal(provider.ApiKeySet, true, "CreateProvider api_key_set")
	equal(provider.ApiKey, "", "CreateProvider api_key (never returned)")
	equal(provider.Version, int64(1), "CreateProvider version")

	// Create agent (editor), assigned to the provider: version 1.
	ctx, cancel = as(*editor)
	agent, err := agents.CreateAgent(ctx, &pb.CreateAgentRequest{Agent: &pb.Agent{
		Name:           "Data Analyst Agent (go)",
		Role:           "Senior Data Analyst",
		Goal:           "Analyze complex datasets",
		Backstory:      "Expert in data science",
		Tools:          []string{"search", "calculator"},
		XLlmProviderId: &pb.Agent_LlmProviderId{LlmProviderId: provider.Id},
		XTemperature:   &pb.Agent_Temperature{Temperature: 0.7},
		XMaxIter:       &pb.Agent_MaxIter{MaxIter: 15},
	}})
	cancel()
	must(err, "CreateAgent")
	agentID, v1Etag := agent.Id, agent.Etag
	equal(agent.Version, int64(1), "CreateAgent version")
	equal(agent.GetLlmProviderId(), provider.Id, "CreateAgent llm_provider_id")
	equal(agent.GetMaxIter(), int32(15), "CreateAgent max_iter")
	equal(agent.GetAllowDelegation(), true, "CreateAgent allow_delegation default")

	// Update temperature and max_iter, override max_tokens: version 2. The
	// mask also names `version` and `etag` (OUTPUT_ONLY, IDENTIFIER-like
	// metadata), which common.proto says are ignored.
	ctx, cancel = as(*editor)
	agent, err = agents.UpdateAgent(ctx, &pb.UpdateAgentRequest{
		Agent: &pb.Agent{
			Id:           agentID,
			XTemperature: &pb.Agent_Temperature{Temperature: 0.8},
			XMaxIter:     &pb.Agent_MaxIter{MaxIter: 20},
			LlmOverrides: &pb.ModelParameters{XMaxTokens: &pb.ModelParameters_MaxTokens{MaxTokens: 1024}},
			Version:      99,
		},
		UpdateMask:        &field_mask.FieldMask{Paths: []string{"temperature", "max_iter", "llm_overrides.max_tokens", "version"}},
		ChangeDescription: "warmer, longer",
	})
	cancel()
	must(err, "UpdateAgent (mask naming the OUTPUT_ONLY `version`)")
	equal(agent.Version, int64(2), "UpdateAgent version (the masked `version` ignored)")
	equal(agent.GetTemperature(), 0.8, "UpdateAgent temperature")
	equal(agent.GetMaxIter(), int32(20), "UpdateAgent max_iter")
	equal(agent.GetLlmOverrides().GetMaxTokens(), int32(1024), "UpdateAgent llm_overrides.max_tokens")

	// List versions (viewer): newest first.
	ctx, cancel = as(*viewer)
	history, err := agents.ListAgentVersions(ctx, &pb.ListAgentVersionsRequest{AgentId: agentID, PageSize: 10})
	cancel()
	must(err, "ListAgentVersions")
	equal(history.TotalSize, int32(2), "ListAgentVersions total_size")
	var listed []string
	for _, v := range history.Versions {
		listed = append(listed, fmt.Sprintf("%d %s", v.VersionNumber, v.Action))
	}
	equal(listed, []string{"2 VERSION_ACTION_UPDATE", "1 VERSION_ACTION_CREATE"}, "ListAgentVersions numbers and actions")
	equal(history.Versions[0].ChangeDescription, "warmer, longer", "ListAgentVersions change_description")
	equal(history.NextPageToken, "", "ListAgentVersions next_page_token (last page)")

	// One version; version_number is a plain int64 here, so 0 is "missing".
	ctx, cancel = as(*viewer)
	first, err := agents.GetAgentVersion(ctx, &pb.GetAgentVersionRequest{AgentId: agentID, VersionNumber: 1})
	cancel()
	must(err, "GetAgentVersion 1")
	equal(first.GetConfiguration().GetMaxIter(), int32(15), "GetAgentVersion 1 configuration.max_iter")
	ctx, cancel = as(*viewer)
	_, err = agents.GetAgentVersion(ctx, &pb.GetAgentVersionRequest{AgentId: agentID})
	cancel()
	d := refused(err, codes.InvalidArgument, "GetAgentVersion without version_number")
	check(d.badRequest != nil, "GetAgentVersion without version_number: BadRequest")
	equal(fieldsOf(d.badRequest), []string{"version_number"}, "GetAgentVersion without version_number: BadRequest field")

	// Diff 1 -> 2: the three changed fields, ordered by path.
	ctx, cancel = as(*viewer)
	diff, err := agents.DiffAgentVersions(ctx, &pb.DiffAgentVersionsRequest{AgentId: agentID, FromVersion: 1, ToVersion: 2})
	cancel()
	must(err, "DiffAgentVersions")
	var changes []string
	for _, c := range diff.Changes {
		changes = append(changes, c.Path+" "+c.Kind.String())
	}
	equal(changes, []string{
		"llm_overrides.max_tokens CHANGE_KIND_ADDED",
		"max_iter CHANGE_KIND_MODIFIED",
		"temperature CHANGE_KIND_MODIFIED",
	}, "DiffAgentVersions paths and kinds")
	maxIter := diff.Changes[1]
	equal([]float64{maxIter.OldValue.GetNumberValue(), maxIter.NewValue.GetNumberValue()}, []float64{15, 20},
		"diff max_iter old and new values")

	// Rollback to version 1 (editor): version 3 with version 1's values.
	ctx, cancel = as(*editor)
	agent, err = agents.RollbackAgent(ctx, &pb.RollbackAgentRequest{AgentId: agentID, VersionNumber: 1})
	cancel()
	must(err, "RollbackAgent")
	equal(agent.Version, int64(3), "RollbackAgent version")
	equal([]interface{}{agent.GetTemperature(), agent.GetMaxIter()}, []interface{}{0.7, int32(15)},
		"RollbackAgent restored temperature and max_iter")
	check(agent.LlmOverrides == nil, "RollbackAgent removed the overrides")

	// Resolve as runtime: the only call that returns the plaintext key.
	// version_number is proto3 `optional`: unset = the current version.
	ctx, cancel = as(*runner)
	resolved, err := runtime.ResolveAgent(ctx, &pb.ResolveAgentRequest{AgentId: agentID})
	cancel()
	must(err, "ResolveAgent")
	equal(resolved.GetAgent().GetId(), agentID, "ResolveAgent agent.id")
	equal(resolved.AgentVersion, int64(3), "ResolveAgent agent_version (version_number unset = current)")
	equal(resolved.ApiKey, apiKey, "ResolveAgent api_key")
	equal(resolved.GetProvider().GetApiKey(), "", "ResolveAgent provider.api_key stays empty")
	effective := resolved.GetEffective()
	equal([]interface{}{effective.GetModelName(), effective.GetTemperature(), effective.GetMaxTokens()},
		[]interface{}{"gpt-4", 0.7, int32(2048)}, "ResolveAgent effective parameters")
	ctx, cancel = as(*runner)
	pinned, err := runtime.ResolveAgent(ctx, &pb.ResolveAgentRequest{
		AgentId:        agentID,
		XVersionNumber: &pb.ResolveAgentRequest_VersionNumber{VersionNumber: 2},
	})
	cancel()
	must(err, "ResolveAgent version_number 2")
	equal([]interface{}{pinned.AgentVersion, pinned.GetEffective().GetMaxTokens()}, []interface{}{int64(2), int32(1024)},
		"ResolveAgent version_number 2 (optional int64 set)")

	// Refused calls and their details.
	ctx, cancel = as(*viewer)
	_, err = agents.CreateAgent(ctx, &pb.CreateAgentRequest{Agent: &pb.Agent{Name: "Nope", Role: "r", Goal: "g"}})
	cancel()
	d = refused(err, codes.PermissionDenied, "viewer CreateAgent")
	check(d.errorInfo != nil, "viewer CreateAgent: ErrorInfo")
	equal([]string{d.errorInfo.Reason, d.errorInfo.Metadata["required_roles"]}, []string{"MISSING_ROLE", "editor,admin"},
		"viewer CreateAgent: ErrorInfo reason and required_roles")

	ctx, cancel = as(*editor)
	_, err = agents.UpdateAgent(ctx, &pb.UpdateAgentRequest{
		Agent:      &pb.Agent{Id: agentID, Name: "x"},
		UpdateMask: &field_mask.FieldMask{Paths: []string{"name", "nmae"}},
	})
	cancel()
	d = refused(err, codes.InvalidArgument, "bad mask path")
	check(d.badRequest != nil, "bad mask path: BadRequest")
	equal(fieldsOf(d.badRequest), []string{"update_mask.paths[1]"}, "bad mask path: BadRequest field")
	equal(d.errorInfo.GetReason(), "INVALID_FIELD", "bad mask path: ErrorInfo.reason")

	ctx, cancel = as(*editor)
	_, err = agents.UpdateAgent(ctx, &pb.UpdateAgentRequest{
		Agent: &pb.Agent{Id: agentID, Etag: v1Etag, XMaxIter: &pb.Agent_MaxIter{MaxIter: 30}},
	})
	cancel()
	d = refused(err, codes.Aborted, "stale etag")
	equal(d.errorInfo.GetReason(), "ETAG_MISMATCH", "stale etag: ErrorInfo.reason")

	ctx, cancel = as(*viewer)
	_, err = agents.GetAgent(ctx, &pb.GetAgentRequest{Id: unknownID})
	cancel()
	d = refused(err, codes.NotFound, "unknown agent")
	check(d.resourceInfo != nil, "unknown agent: ResourceInfo")
	equal([]string{d.resourceInfo.ResourceType, d.resourceInfo.ResourceName}, []string{"agent", unknownID},
		"unknown agent: ResourceInfo type and name")

	ctx, cancel = as(*editor)
	_, err = agents.CreateAgent(ctx, &pb.CreateAgentRequest{Agent: &pb.Agent{
		Name: "Orphan (go)", Role: "r", Goal: "g",
		XLlmProviderId: &pb.Agent_LlmProviderId{LlmProviderId: unknownID},
	}})
	cancel()
	d = refused(err, codes.FailedPrecondition, "unknown provider")
	check(d.precondition != nil, "unknown provider: PreconditionFailure")
	equal(typesOf(d.precondition), []string{"PROVIDER_NOT_FOUND"}, "unknown provider: PreconditionFailure type")

	// Deletes: DeleteProviderRequest names its id `provider_id`,
	// DeleteAgentRequest `id` (field 1 in both).
	ctx, cancel = as(*admin)
	_, err = providers.DeleteProvider(ctx, &pb.DeleteProviderRequest{ProviderId: provider.Id})
	cancel()
	d = refused(err, codes.FailedPrecondition, "DeleteProvider while an agent uses it")
	equal(typesOf(d.precondition), []string{"PROVIDER_IN_USE"}, "DeleteProvider in use: PreconditionFailure type")
	ctx, cancel = as(*editor)
	_, err = agents.DeleteAgent(ctx, &pb.DeleteAgentRequest{Id: agentID})
	cancel()
	must(err, "DeleteAgent by id")
	ctx, cancel = as(*admin)
	_, err = providers.DeleteProvider(ctx, &pb.DeleteProviderRequest{ProviderId: provider.Id})
	cancel()
	must(err, "DeleteProvider by provider_id")
	ctx, cancel = as(*viewer)
	_, err = providers.GetProvider(ctx, &pb.GetProviderRequest{Id: provider.Id})
	cancel()
	d = refused(err, codes.NotFound, "deleted provider")
	equal(d.resourceInfo.GetResourceType(), "provider", "deleted provider: ResourceInfo type")

	fmt.Printf("go workflow: all %d checks passed\n", count)
}

// fieldsOf lists a BadRequest's violated fields.
func fieldsOf(b *errdetails.BadRequest) []string {
	var fields []string
	for _, v := range b.GetFieldViolations() {
		fields = append(fields, v.Field)
	}
	return fields
}

// typesOf lists a PreconditionFailure's violation types.
func typesOf(p *errdetails.PreconditionFailure) []string {
	var types []string
	for _, v := range p.GetViolations() {
		types = append(types, v.Type)
	}
	return types
}
