#!/usr/bin/env perl
# Checks examples/echo.rs (WS_LEGACY=1) with Perl's Protocol::WebSocket speaking the legacy
# drafts: hixie-76 (which the module calls draft-ietf-hybi-00) and hixie-75.
#
#   perl legacy_echo.pl 127.0.0.1:PORT
#
# Prints `ok   NAME` or `FAIL NAME: WHY` per check, then `perl-client: N passed, M failed`.
use strict;
use warnings;
use Encode qw(encode_utf8 decode_utf8);
use IO::Socket::INET;
use IO::Select;
use Protocol::WebSocket::Handshake::Client;
use Protocol::WebSocket::Frame;

my $addr = shift or die "usage: $0 HOST:PORT\n";
my $WAIT = 10;    # seconds, for every read
my ($passed, $failed) = (0, 0);

sub check {
    my ($name, $code) = @_;
    my $error = eval { $code->(); 1 } ? undef : ($@ || 'failed');
    if (defined $error) {
        $error =~ s/\s+$//;
        print "FAIL $name: $error\n";
        $failed++;
    } else {
        print "ok   $name\n";
        $passed++;
    }
}

# Reads what the socket has, waiting at most $WAIT; dies on timeout. '' at EOF.
sub read_some {
    my ($sock) = @_;
    IO::Select->new($sock)->can_read($WAIT) or die "timed out reading\n";
    my $n = sysread($sock, my $buf, 65536);
    die "read: $!\n" unless defined $n;
    return $buf;
}

# Opens a connection and completes the handshake of `version`. Returns the socket, the
# handshake and the bytes read past it.
sub open_ws {
    my ($version, $path) = @_;
    my $sock = IO::Socket::INET->new(PeerAddr => $addr, Proto => 'tcp', Timeout => $WAIT)
      or die "connect $addr: $!\n";
    my $hs = Protocol::WebSocket::Handshake::Client->new(url => "ws://$addr$path", version => $version);
    my $request = $hs->to_string;
    syswrite($sock, $request) == length($request) or die "short write\n";
    my $rest = '';
    until ($hs->is_done) {
        my $buf = read_some($sock);
        die "EOF during the handshake\n" if $buf eq '';
        $hs->parse($buf) or die 'handshake: ' . $hs->error . "\n";
        $rest = $buf;    # what parse left is past the handshake
    }
    return ($sock, $hs, $rest);
}

# The next `count` text messages (decoded), with frames parsed by the module.
sub read_messages {
    my ($sock, $frame, $count, $rest) = @_;
    my @messages;
    $frame->append($rest) if defined $rest && length $rest;
    while (1) {
        while (defined(my $bytes = $frame->next_bytes)) {
            push @messages, decode_utf8($bytes);
            return @messages if @messages == $count;
        }
        my $buf = read_some($sock);
        die 'EOF after ' . scalar(@messages) . " of $count messages\n" if $buf eq '';
        $frame->append($buf);
    }
}

sub text_frame {
    my ($version, $text) = @_;
    return Protocol::WebSocket::Frame->new(version => $version, buffer => encode_utf8($text))->to_bytes;
}

# Sends the closing frame and expects the server's, then EOF.
sub close_ws {
    my ($sock, $version) = @_;
    my $close = Protocol::WebSocket::Frame->new(version => $version, type => 'close')->to_bytes;
    syswrite($sock, $close);
    my $got = '';
    while (1) {
        my $buf = read_some($sock);
        last if $buf eq '';
        $got .= $buf;
    }
    $got eq "\xff\x00" or die 'expected the closing frame and EOF, got ' . unpack('H*', $got) . "\n";
}

for my $case (['hixie-76', 'draft-ietf-hybi-00'], ['hixie-75', 'draft-hixie-75']) {
    my ($label, $version) = @$case;
    my ($sock, $hs, $rest);
    check("$label handshake", sub {
        ($sock, $hs, $rest) = open_ws($version, "/legacy?draft=$label");
        my $location = $hs->res->location;
        $location eq "ws://$addr/legacy?draft=$label" or die "location is $location\n";
        my $origin = $hs->res->origin // '';
        $origin eq "http://$addr" or die "origin is $origin\n";
    });
    next unless $sock;
    my $frame = Protocol::WebSocket::Frame->new(version => $version);
    check("$label echo", sub {
        syswrite($sock, text_frame($version, 'hello'));
        my ($echo) = read_messages($sock, $frame, 1, $rest);
        $echo eq 'hello' or die "echoed [$echo]\n";
    });
    check("$label utf8 echo", sub {
        my $text = "h\x{e9}llo w\x{f6}rld \x{2713} \x{1F600}";
        syswrite($sock, text_frame($version, $text));
        my ($echo) = read_messages($sock, $frame, 1);
        $echo eq $text or die "echoed [" . encode_utf8($echo) . "]\n";
    });
    check("$label three messages in one write", sub {
        my @texts = ('one', '', 'three');
        syswrite($sock, join('', map { text_frame($version, $_) } @texts));
        my @echo = read_messages($sock, $frame, 3);
        "@echo" eq "@texts" or die "echoed [@echo]\n";
    });
    check("$label large message", sub {
        my $text = 'x' x 100_000;
        my $bytes = text_frame($version, $text);
        my $off = 0;
        while ($off < length $bytes) {
            my $n = syswrite($sock, $bytes, length($bytes) - $off, $off);
            die "write: $!\n" unless defined $n;
            $off += $n;
        }
        my ($echo) = read_messages($sock, $frame, 1);
        length($echo) == 100_000 or die 'echoed ' . length($echo) . " characters\n";
    });
    check("$label close", sub { close_ws($sock, $version) });
}

print "perl-client: $passed passed, $failed failed\n";
exit($failed ? 1 : 0);
