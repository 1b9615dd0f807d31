// roundtrip creates an artifact on a live server, downloads it (whole and a range), compares
// the bytes and their blake3, and shows that a server error reaches the caller with its
// status code. The test command runs it.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
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
	conn, err := grpc.DialContext(ctx, *addr, grpc.WithInsecure(), grpc.WithBlock())
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

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "roundtrip: "+format+"\n", args...)
	os.Exit(1)
}
