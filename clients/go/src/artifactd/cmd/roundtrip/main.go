// roundtrip creates an artifact on a live server, downloads it (whole, a range, and into a
// file, fresh and resumed), compares the bytes and their blake3, and shows that a server
// error reaches the caller with its status code. The test command runs it.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"artifactd/client"
	pb "artifactd/gen/artifactdv1"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"lukechampine.com/blake3"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "the server's gRPC address")
	key := flag.String("key", os.Getenv("ARTIFACTD_TOKEN"), "an API key or token, sent as the bearer credential")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if *key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+*key)
	}
	conn, err := grpc.DialContext(ctx, *addr, append(client.DialOptions(), grpc.WithInsecure(), grpc.WithBlock())...)
	if err != nil {
		fail("connecting to %s: %v", *addr, err)
	}
	defer conn.Close()
	artifacts := pb.NewArtifactServiceClient(conn)

	content := make([]byte, 700*1024)
	if _, err := rand.Read(content); err != nil {
		fail("random content: %v", err)
	}
	project := fmt.Sprintf("go%d", time.Now().UnixNano())
	created, err := client.Create(ctx, artifacts, &pb.CreateArtifactHeader{
		Tenant: "acme", Project: project, ArtifactType: "bundle", Name: "go.bin",
	}, bytes.NewReader(content))
	if err != nil {
		fail("create: %v", err)
	}
	var downloaded bytes.Buffer
	header, err := client.Download(ctx, artifacts, &pb.DownloadArtifactRequest{
		Tenant: "acme", Project: project, ArtifactId: created.Artifact.Id,
	}, &downloaded)
	if err != nil {
		fail("download: %v", err)
	}
	if !bytes.Equal(downloaded.Bytes(), content) {
		fail("the downloaded bytes differ from the uploaded ones")
	}
	// The upload's finish message carried this digest, and the server agreed with it.
	digest := blake3.Sum256(content)
	if want := hex.EncodeToString(digest[:]); created.Version.Blake3 != want || header.Blake3 != want {
		fail("blake3: local %s, stored %s, announced %s", want, created.Version.Blake3, header.Blake3)
	}
	var part bytes.Buffer
	if _, err := client.Download(ctx, artifacts, &pb.DownloadArtifactRequest{
		Tenant: "acme", Project: project, ArtifactId: created.Artifact.Id, Offset: 10, Length: 5,
	}, &part); err != nil || !bytes.Equal(part.Bytes(), content[10:15]) {
		fail("a range: %v", err)
	}
	downloadToFile(ctx, artifacts, &pb.DownloadArtifactRequest{
		Tenant: "acme", Project: project, ArtifactId: created.Artifact.Id,
	}, content)
	_, err = artifacts.GetArtifact(ctx, &pb.GetArtifactRequest{
		Tenant: "acme", Project: project,
		Selector: &pb.GetArtifactRequest_ArtifactId{ArtifactId: "00000000-0000-7000-8000-000000000000"},
	})
	if status.Code(err) != codes.NotFound {
		fail("a missing artifact should be NOT_FOUND, got %v", err)
	}
	fmt.Printf("roundtrip ok %s %d bytes version %s; missing artifact: %s\n",
		created.Artifact.Id, len(content), header.Version, status.Convert(err).Message())
}

// downloadToFile downloads into a file: fresh, resuming the start of the content a failed
// attempt left, and over parts of other content (shorter, and longer than the version),
// which are replaced by the version fetched whole.
func downloadToFile(ctx context.Context, artifacts pb.ArtifactServiceClient, request *pb.DownloadArtifactRequest, content []byte) {
	dir, err := os.MkdirTemp("", "roundtrip")
	if err != nil {
		fail("a temporary directory: %v", err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "go.bin")
	other := make([]byte, len(content)+4096)
	if _, err := rand.Read(other); err != nil {
		fail("random content: %v", err)
	}
	for _, attempt := range []struct {
		name    string
		part    []byte
		resumed uint64
	}{
		{"fresh", nil, 0},
		{"resumed", content[:300*1024], 300 * 1024},
		{"part of other content", other[:100*1024], 0},
		{"part longer than the version", other, 0},
	} {
		os.Remove(path)
		if attempt.part != nil {
			if err := os.WriteFile(path+".part", attempt.part, 0o644); err != nil {
				fail("writing a part: %v", err)
			}
		}
		done, err := client.DownloadTo(ctx, artifacts, request, path)
		if err != nil {
			fail("download to a file (%s): %v", attempt.name, err)
		}
		written, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(written, content) {
			fail("download to a file (%s): the file differs from the content (%v)", attempt.name, err)
		}
		if done.ResumedFrom != attempt.resumed {
			fail("download to a file (%s): resumed from %d, expected %d", attempt.name, done.ResumedFrom, attempt.resumed)
		}
		if _, err := os.Stat(path + ".part"); !os.IsNotExist(err) {
			fail("download to a file (%s): the part is still there (%v)", attempt.name, err)
		}
	}
	takeTurns(ctx, artifacts, request, content, dir)
	missing := &pb.DownloadArtifactRequest{Tenant: request.Tenant, Project: request.Project + "-none", ArtifactId: request.ArtifactId}
	if _, err := client.DownloadTo(ctx, artifacts, missing, filepath.Join(dir, "missing.bin")); status.Code(err) != codes.NotFound {
		fail("a download of a version that is not there: %v, expected NOT_FOUND", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "missing.bin.part")); !os.IsNotExist(err) {
		fail("a download of a version that is not there left a part (%v)", err)
	}
	ranged := &pb.DownloadArtifactRequest{
		Tenant: request.Tenant, Project: request.Project, ArtifactId: request.ArtifactId, Offset: 1,
	}
	if _, err := client.DownloadTo(ctx, artifacts, ranged, path); err == nil {
		fail("download to a file accepted a range")
	}
}

// takeTurns downloads into paths another download holds: a held part is left alone, and
// of downloads started at once each finishes or stops that way, and the file ends whole.
func takeTurns(ctx context.Context, artifacts pb.ArtifactServiceClient, request *pb.DownloadArtifactRequest, content []byte, dir string) {
	held := filepath.Join(dir, "held.bin")
	holder, err := os.OpenFile(held+".part", os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		fail("a part: %v", err)
	}
	if _, err := holder.Write(content[:1000]); err != nil {
		fail("writing a part: %v", err)
	}
	if err := syscall.Flock(int(holder.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		fail("locking a part: %v", err)
	}
	var running *client.DownloadInProgressError
	if _, err := client.DownloadTo(ctx, artifacts, request, held); !errors.As(err, &running) {
		fail("a download into a held part: %v, expected a DownloadInProgressError", err)
	}
	if part, err := os.ReadFile(held + ".part"); err != nil || !bytes.Equal(part, content[:1000]) {
		fail("a download changed a part another one holds (%v)", err)
	}
	holder.Close()
	done, err := client.DownloadTo(ctx, artifacts, request, held)
	if err != nil || done.ResumedFrom != 1000 {
		fail("a download after the part was let go: %v (%+v)", err, done)
	}
	same := filepath.Join(dir, "same.bin")
	for round := 0; round < 4; round++ {
		results := make([]error, 8)
		var wg sync.WaitGroup
		for i := range results {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				_, results[i] = client.DownloadTo(ctx, artifacts, request, same)
			}(i)
		}
		wg.Wait()
		finished := 0
		for _, err := range results {
			if err == nil {
				finished++
			} else if !errors.As(err, &running) {
				fail("round %d: a download at once with others: %v", round, err)
			}
		}
		if finished == 0 {
			fail("round %d: no download finished", round)
		}
		if written, err := os.ReadFile(same); err != nil || !bytes.Equal(written, content) {
			fail("round %d: the file differs from the content (%v)", round, err)
		}
		if _, err := os.Stat(same + ".part"); !os.IsNotExist(err) {
			fail("round %d: a part was left (%v)", round, err)
		}
	}
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "roundtrip: "+format+"\n", args...)
	os.Exit(1)
}
