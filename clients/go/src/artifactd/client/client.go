// Package client is a small helper over the generated artifactd stubs
// (artifactd/gen/artifactdv1): streaming uploads that end with a finish message carrying the
// content's size and blake3, so that a cut-short or altered upload can never be committed,
// and streaming downloads verified against the version's blake3.
package client

import (
	"context"
	"encoding/hex"
	"fmt"
	"hash"
	"io"

	pb "artifactd/gen/artifactdv1"

	"lukechampine.com/blake3"
)

// IntegrityError is a whole download whose bytes do not hash to the version's blake3.
type IntegrityError struct {
	ArtifactID, Version, Received, Announced string
}

func (e *IntegrityError) Error() string {
	return fmt.Sprintf("artifact %s version %s: received bytes hash to %s, the server announced %s",
		e.ArtifactID, e.Version, e.Received, e.Announced)
}

func newHasher() hash.Hash { return blake3.New(32, nil) }

func hexDigest(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil)) }

// PieceBytes is the size of the data messages an upload sends (the server accepts up to
// 256 KiB).
const PieceBytes = 256 * 1024

// Create uploads r as the first version of a new artifact described by header.
func Create(ctx context.Context, artifacts pb.ArtifactServiceClient, header *pb.CreateArtifactHeader, r io.Reader) (*pb.CreateArtifactResponse, error) {
	stream, err := artifacts.CreateArtifact(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&pb.CreateArtifactRequest{Message: &pb.CreateArtifactRequest_Header{Header: header}}); err != nil {
		return nil, err
	}
	hasher := newHasher()
	size, err := sendPieces(io.TeeReader(r, hasher), func(piece []byte) error {
		return stream.Send(&pb.CreateArtifactRequest{Message: &pb.CreateArtifactRequest_Data{Data: piece}})
	})
	if err != nil {
		return nil, err
	}
	finish := &pb.UploadFinish{Size: &size, Blake3: hexDigest(hasher)}
	if err := stream.Send(&pb.CreateArtifactRequest{Message: &pb.CreateArtifactRequest_Finish{Finish: finish}}); err != nil {
		return nil, err
	}
	return stream.CloseAndRecv()
}

// Update uploads r as a new version of the artifact header names.
func Update(ctx context.Context, artifacts pb.ArtifactServiceClient, header *pb.UpdateArtifactHeader, r io.Reader) (*pb.UpdateArtifactResponse, error) {
	stream, err := artifacts.UpdateArtifact(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&pb.UpdateArtifactRequest{Message: &pb.UpdateArtifactRequest_Header{Header: header}}); err != nil {
		return nil, err
	}
	hasher := newHasher()
	size, err := sendPieces(io.TeeReader(r, hasher), func(piece []byte) error {
		return stream.Send(&pb.UpdateArtifactRequest{Message: &pb.UpdateArtifactRequest_Data{Data: piece}})
	})
	if err != nil {
		return nil, err
	}
	finish := &pb.UploadFinish{Size: &size, Blake3: hexDigest(hasher)}
	if err := stream.Send(&pb.UpdateArtifactRequest{Message: &pb.UpdateArtifactRequest_Finish{Finish: finish}}); err != nil {
		return nil, err
	}
	return stream.CloseAndRecv()
}

func sendPieces(r io.Reader, send func([]byte) error) (uint64, error) {
	var size uint64
	for {
		piece := make([]byte, PieceBytes)
		n, err := io.ReadFull(r, piece)
		if n > 0 {
			if sendErr := send(piece[:n]); sendErr != nil {
				return size, sendErr
			}
			size += uint64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return size, nil
		}
		if err != nil {
			return size, fmt.Errorf("reading the content: %w", err)
		}
	}
}

// Download writes the requested version (or range) to w and returns the download's header.
// It fails when fewer bytes arrive than the header announced, and a whole download fails with
// an *IntegrityError when its bytes do not hash to the version's blake3 (a range cannot be
// checked).
func Download(ctx context.Context, artifacts pb.ArtifactServiceClient, request *pb.DownloadArtifactRequest, w io.Writer) (*pb.DownloadHeader, error) {
	stream, err := artifacts.DownloadArtifact(ctx, request)
	if err != nil {
		return nil, err
	}
	var header *pb.DownloadHeader
	var written uint64
	var hasher hash.Hash
	if request.Offset == 0 {
		hasher = newHasher()
	}
	for {
		message, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return header, err
		}
		switch m := message.Message.(type) {
		case *pb.DownloadArtifactResponse_Header:
			header = m.Header
		case *pb.DownloadArtifactResponse_Data:
			if hasher != nil {
				hasher.Write(m.Data)
			}
			if _, err := w.Write(m.Data); err != nil {
				return header, err
			}
			written += uint64(len(m.Data))
		}
	}
	if header == nil {
		return nil, fmt.Errorf("the download ended without a header")
	}
	if written != header.Length {
		return header, fmt.Errorf("received %d bytes of the %d announced", written, header.Length)
	}
	if hasher != nil && header.Length == header.Size {
		if received := hexDigest(hasher); received != header.Blake3 {
			return header, &IntegrityError{header.ArtifactId, header.Version, received, header.Blake3}
		}
	}
	return header, nil
}
